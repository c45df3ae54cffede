"""n-gram heads (Akyürek et al. 2024, "In-context language learning", ``berlino/seq_icl``;
docs/methods.md §1).

An n-gram head at query i attends to the keys j whose preceding n tokens equal the n tokens
ending at i: ``M_n[i, j] = 1`` iff ``x_{j−1−k} = x_{i−k}`` for k = 0..n−1 and j < i, so that
it can copy the token that followed that context (n = 1 is the induction template). Score_n =
mean over the query rows with at least one match of ``Σ_j A[i, j] M_n[i, j]`` (the attention mass
on the matches; :func:`~seqlens.circuits.token_heads.prefix_score`). A head is labelled with the
n of its highest score (:func:`ngram_labels`).

Default data, as in the paper: strings of random DFA languages (REGBENCH, :func:`seqlens.tasks.icll`:
18 symbols, ≤ 12 states, ≤ 4 out-edges, 10–20 strings of ≤ 50 symbols joined by a separator), cut
to full rows of ``seq_len`` tokens (no padding). The symbols are mapped into the model's
vocabulary: identity for an organism trained on the task, bytes ``a..r`` and a space separator for
byte-level models, else the first non-special ids; the model's BOS is prepended when it has one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from seqlens.circuits.heads import HeadScores
from seqlens.circuits.token_heads import special_tokens, token_head_scores
from seqlens.text import is_byte_level

ICLL_VOCAB = 20  # 18 DFA symbols, separator, pad (the pad never appears in the default data)


def ngram_template(tokens: Tensor, n: int) -> Tensor:
    """``M_n [B, L, L]`` float: ``M_n[b, i, j] = 1`` iff ``j < i`` and ``x_{j−1−k} = x_{i−k}``
    for every k = 0..n−1 (all indices ≥ 0)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    B, L = tokens.shape
    same = (tokens[:, :, None] == tokens[:, None, :]).float()  # [b, i, j'] = 1[x_i = x_j']
    out = torch.ones(B, L, L)
    for k in range(n):  # S_k[i, j] = same[i − k, j − 1 − k]
        s_k = torch.zeros(B, L, L)
        if L - k - 1 > 0:
            s_k[:, k:, k + 1:] = same[:, : L - k, : L - k - 1]
        out = out * s_k
    return torch.tril(out, diagonal=-1)


def _symbol_ids(model) -> Tensor:
    """Token ids of the ``ICLL_VOCAB − 1`` used symbols (18 DFA symbols, then the separator)."""
    recipe = getattr(model, "recipe", None)
    if recipe is not None and recipe.data == "task:icll":
        return torch.arange(ICLL_VOCAB - 1)
    V = model.cfg.vocab_size
    if is_byte_level(model):
        return torch.tensor([ord("a") + s for s in range(ICLL_VOCAB - 2)] + [ord(" ")])
    banned = set(special_tokens(model)[1])
    ids = [t for t in range(V) if t not in banned][: ICLL_VOCAB - 1]
    if len(ids) < ICLL_VOCAB - 1:
        raise ValueError(f"model: the default DFA data needs {ICLL_VOCAB - 1} non-special token ids, "
                         f"the vocabulary has {len(ids)}; pass tokens=")
    return torch.tensor(ids)


def dfa_tokens(model, seq_len: int = 128, batch: int = 10, seed: int = 0) -> tuple[Tensor, dict]:
    """``([batch, seq_len (+1 with BOS)], settings)``: full rows of random-DFA strings in the model's
    vocabulary (see the module docstring)."""
    from seqlens.tasks import icll, make_generator

    if not isinstance(seq_len, int) or seq_len < 4:
        raise ValueError(f"seq_len: expected an integer >= 4, got {seq_len!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    g, rows = make_generator(seed), []
    while len(rows) < batch:  # rows that reach seq_len (shorter ones would need padding)
        b = icll(batch, seq_len=seq_len, seed=g, vocab=ICLL_VOCAB)
        rows += [r for r, n in zip(b.tokens, b.meta["lengths"]) if int(n) >= seq_len]
    data = _symbol_ids(model)[torch.stack(rows[:batch])]
    bos = special_tokens(model)[0]
    if bos is not None:
        data = torch.cat([torch.full((batch, 1), bos), data], dim=1)
    return data, {"data": "random DFA strings (icll)", "batch": batch, "seq_len": data.shape[1],
                  "bos": bos, "seed": seed}


def ngram_scores(model, n: int = 2, tokens: Tensor | None = None, prompts: str | Sequence[str] | None = None,
                 seq_len: int = 128, batch: int = 10, seed: int = 0, normalisation: str = "auto") -> HeadScores:
    """n-gram head scores ``[n_layers, n_heads]`` for one ``n`` (1, 2, 3, ...): the attention
    mass on the keys that follow an earlier occurrence of the current n-gram (module docstring).
    ``tokens`` / ``prompts`` as in :func:`~seqlens.circuits.token_heads.previous_token_scores`;
    without them, random-DFA strings (:func:`dfa_tokens`)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    return token_head_scores(model, f"ngram{n}", lambda t: ngram_template(t, n), tokens, prompts,
                             measure="prefix", seq_len=seq_len, batch=batch, seed=seed,
                             normalisation=normalisation,
                             default_data=lambda m, L, B, s: dfa_tokens(m, L, B, s), extra_settings={"n": n})


def ngram_labels(model, ns: Sequence[int] = (1, 2, 3), **kwargs) -> tuple[Tensor, list[HeadScores]]:
    """``(labels [n_layers, n_heads], scores)``: each head's n with the highest score among ``ns``
    (Akyürek et al.'s labelling) and the per-n :class:`HeadScores`; ``kwargs`` as in
    :func:`ngram_scores` (every n is scored on the same data)."""
    scores = [ngram_scores(model, n, **kwargs) for n in ns]
    stacked = torch.stack([torch.nan_to_num(s.scores, nan=float("-inf")) for s in scores])
    return torch.tensor(list(ns))[stacked.argmax(0)], scores
