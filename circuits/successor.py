"""Successor heads (Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention Heads
In The Wild"; docs/methods.md §3): heads whose effective OV circuit maps an ordinal token to the next
one ("Monday" → "Tuesday", "3" → "4").

For head ``(l, h)`` and token ``t`` of an ordinal set ``T`` (Gould et al. §2):

    logits_h(t) = x_l(t) · N1_l · W_OV^h · Nf · W_U            restricted to the columns of T

- ``x_l(t)``: what layer l reads when the residual stream holds token t: the effective embedding
  ``e(t) = W_E[t] + MLP0(ln2(W_E[t]))`` (:func:`~seqlens.circuits.ov.effective_embedding`, options
  ``mlp0``, ``ln``, ``resid``) for layers ≥ 1; the raw ``W_E[t]`` for layer 0, whose heads read
  the embedding before MLP0 runs (in Gould et al.'s models the successor heads sit in later layers).
- ``N1_l``, ``Nf``: the linear parts of ``ln1`` and ``ln_final`` (``fold_ln=True``, the default;
  :func:`~seqlens.circuits.ov.norm_linear`: weight, and centring for LayerNorm). This is the
  effective OV circuit of TransformerLens-processed models (``fold_ln`` folds both weights into
  W_V and W_U), which is what Gould et al. score. The final norm's ``1/scale`` is a positive factor
  per input token, so it cannot change an argmax; its bias is a constant offset that the head
  does not write, and is left out.
- ``W_OV^h``: exact for attention, the documented linearisation for recurrent head groups
  (:mod:`seqlens.circuits.ov`, recorded in ``settings["ov"]``).

Success for a pair ``t_i → t_{i+1}``: ``argmax_{u ∈ T} logits_h(t_i)[u] = t_{i+1}``. The score is the
mean success over all pairs of all sets (pairs pooled); ``settings["per_set"]`` holds each set's own
``[n_layers, n_heads]`` scores; heads above ``threshold`` (0.4, Gould et al.) are
``settings["heads"]``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from seqlens.circuits.heads import HeadScores
from seqlens.circuits.ov import (check_model, effective_embedding, embedding_description,
                                 norm_linear, ov_factors)
from seqlens.tasks import SUCCESSOR_FAMILIES
from seqlens.text import encode, is_byte_level

THRESHOLD = 0.4  # successor head if its score exceeds this (Gould et al.)
MIN_ITEMS = 3  # a set with fewer single-token items is dropped

GOULD_SETS: dict[str, tuple[str, ...]] = {
    "numbers": SUCCESSOR_FAMILIES["numbers"],  # 1 .. 200
    "number_words": SUCCESSOR_FAMILIES["number_words"],  # one .. twenty
    "ordinals": SUCCESSOR_FAMILIES["ordinals"][:10],  # first .. tenth
    "weekdays": SUCCESSOR_FAMILIES["weekdays"],
    "weekdays_short": SUCCESSOR_FAMILIES["weekdays_short"],
    "months": SUCCESSOR_FAMILIES["months"],
    "months_short": SUCCESSOR_FAMILIES["months_short"],
    "letters": SUCCESSOR_FAMILIES["letters"],
}
"""Gould et al.'s tasks; with a tokenizer each item is encoded with a leading space."""

BYTE_SETS: dict[str, tuple[str, ...]] = {
    "digits": tuple("0123456789"),
    "lowercase": tuple("abcdefghijklmnopqrstuvwxyz"),
    "uppercase": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}
"""Single-byte ordinals for byte-level models (vocab 256, token = byte, no tokenizer)."""

Sets = Mapping[str, Sequence[int | None]]


# ----------------------------------------------------------------------------- ordinal sets


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (Hugging Face ``encode`` without special tokens, else plain encode)."""
    return encode(text, tokenizer)


def _byte_families(model) -> tuple[dict[str, tuple[str, ...]], str]:
    """A zoo organism trained on the successor task: that task's families (only their single-byte
    items survive); any other byte-level model: :data:`BYTE_SETS`."""
    recipe = model.recipe
    if recipe is not None and getattr(recipe, "data", None) == "task:successor":
        names = (getattr(recipe, "data_kwargs", None) or {}).get("families") or list(SUCCESSOR_FAMILIES)
        names = [names] if isinstance(names, str) else list(names)
        return ({n: SUCCESSOR_FAMILIES[n] for n in names},
                "byte-level: single-byte items of the successor task's families (seqlens.tasks)")
    return dict(BYTE_SETS), "byte-level: digits, lowercase and uppercase letters"


def _ordinal_source(model) -> tuple[dict[str, tuple[str, ...]], Callable[[str], list[int]], str]:
    """``(families, encode, description)`` for this model's vocabulary."""
    tok = model.tokenizer
    if tok is not None:
        description = "tokenizer: Gould et al. sets, leading space"
        return dict(GOULD_SETS), lambda s: _encode(tok, " " + s), description
    if is_byte_level(model):
        families, description = _byte_families(model)
        return families, encode, description
    if model.recipe is not None:  # a zoo organism with a task vocabulary
        from seqlens.circuits.token_heads import special_tokens

        banned = set(special_tokens(model)[1])
        ids = tuple(str(t) for t in range(model.cfg.vocab_size) if t not in banned)
        return ({"token_ids": ids}, lambda s: [int(s)],
                "task vocabulary: the non-special token ids in numeric order (ordinal by index only)")
    raise ValueError(f"model: no tokenizer, not byte-level (vocab_size={model.cfg.vocab_size}) and no task "
                     "vocabulary, so it has no ordinal vocabulary; pass sets={name: [token ids in order]}")


def _pairs(ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """Successor pairs ``(t_i, t_{i+1})`` of consecutive items that were both kept (not None)."""
    return [(a, b) for a, b in zip(ids[:-1], ids[1:]) if a is not None and b is not None]


def _trim(ids: list[int | None]) -> list[int | None]:
    """Drop leading and trailing gaps (None), which no pair can use."""
    kept = [i for i, t in enumerate(ids) if t is not None]
    return ids[kept[0]: kept[-1] + 1]


def ordinal_sets(model, gaps: bool = False) -> dict[str, list[int]]:
    """The ordinal token sequences usable with ``model``: ``{set name: token ids in order}``.

    With ``model.tokenizer``: :data:`GOULD_SETS`, each item with a leading space, kept when it
    encodes to exactly one token. Byte-level models (vocab 256, no tokenizer): the single-byte
    items of the successor task's families for a zoo organism trained on it (``"1".."9"`` and
    ``"A".."Z"``), else :data:`BYTE_SETS`. Other zoo organisms (task vocabularies such as MQAR's):
    their non-special token ids in numeric order, one set ``"token_ids"``. A set keeping fewer than ``MIN_ITEMS`` = 3 items, or no
    successor pair, is dropped. A pair needs both items kept: with ``gaps=True`` a dropped item
    stays in its list as None (leading / trailing ones trimmed), so that no pair spans it — the
    form :func:`successor_scores` uses; with ``gaps=False`` (default) only the kept ids.
    """
    check_model(model)
    if not isinstance(gaps, bool):
        raise ValueError(f"gaps: expected True or False, got {gaps!r}")
    families, encode, _ = _ordinal_source(model)
    V, out = model.cfg.vocab_size, {}
    for name, items in families.items():
        ids = [(e[0] if len(e) == 1 and 0 <= e[0] < V else None) for e in map(encode, items)]
        if sum(i is not None for i in ids) >= MIN_ITEMS and _pairs(ids):
            out[name] = _trim(ids) if gaps else [i for i in ids if i is not None]
    if not out:
        raise ValueError("model: no ordinal set has at least 3 single-token items; "
                         "pass sets={name: [token ids in order]}")
    return out


def _check_sets(model, sets) -> dict[str, list[int | None]]:
    """Validate user ``sets``: a non-empty mapping name -> ids in order (None = dropped item), each
    with at least one successor pair and ids in ``[0, vocab_size)``."""
    if not isinstance(sets, Mapping) or not sets:
        raise ValueError(f"sets: expected a non-empty dict {{name: [token ids in order]}}, got {sets!r}")
    V, out = model.cfg.vocab_size, {}
    for name, ids in sets.items():
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, Tensor)):
            raise ValueError(f"sets[{name!r}]: expected a sequence of token ids, got {type(ids).__name__}")
        ids = [None if i is None else int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        bad = [i for i in ids if i is not None and not 0 <= i < V]
        if bad:
            raise ValueError(f"sets[{name!r}]: token ids must lie in [0, {V}), got {bad[:5]}")
        if not _pairs(ids):
            raise ValueError(f"sets[{name!r}]: needs at least two consecutive token ids (one pair)")
        out[str(name)] = ids
    return out


# ----------------------------------------------------------------------------- scores


def head_logits(model, layer: int, x: Tensor, columns: Tensor, fold_ln: bool = True) -> Tensor:
    """Effective OV logits ``x · N1 · W_OV^h · Nf · W_U[:, columns]`` of every head of ``layer``,
    ``[H, n, len(columns)]`` for inputs ``x [n, d_model]`` (norm linear parts when ``fold_ln``)."""
    W_V, W_O, _ = ov_factors(model, layer)
    if fold_ln:
        x = x @ norm_linear(model.blocks[layer].ln1)
    out = (x[None] @ W_V) @ W_O  # [H, n, d_model]
    W_U = model.unembed.weight.detach()[columns].T  # [d_model, m]
    if fold_ln:
        W_U = norm_linear(model.ln_final) @ W_U
    return out @ W_U


def _pair_success(logits: Tensor, ids: list[int | None], col: dict[int, int]) -> Tensor:
    """``[H, n_pairs]`` bool: the argmax over the set's tokens of ``logits [H, n, m]`` (rows and
    columns indexed by ``col``) at each pair's source is the pair's target."""
    members = list(dict.fromkeys(i for i in ids if i is not None))
    cols = torch.tensor([col[t] for t in members], device=logits.device)
    pairs = _pairs(ids)
    rows = torch.tensor([col[a] for a, _ in pairs], device=logits.device)
    pred = cols[logits[:, rows][:, :, cols].argmax(-1)]  # [H, n_pairs] column of the winner
    target = torch.tensor([col[b] for _, b in pairs], device=logits.device)
    return pred == target


@torch.no_grad()
def successor_scores(model, sets: Sets | None = None, mlp0: bool = True, ln: bool = True,
                     resid: bool = True, fold_ln: bool = True, threshold: float = THRESHOLD) -> HeadScores:
    """Successor scores ``[n_layers, n_heads]``: the share of ordinal pairs ``t_i → t_{i+1}`` whose
    successor wins the argmax of the head's effective OV logits over the set (module docstring).

    ``sets``: ``{name: token ids in order}`` (None entries are dropped items no pair spans);
    default :func:`ordinal_sets` ``(model, gaps=True)``. ``mlp0``, ``ln``, ``resid``: options of
    :func:`~seqlens.circuits.ov.effective_embedding`. ``fold_ln``: include ``ln1`` / ``ln_final``'s
    linear parts. Settings: the sets, their sizes and pair counts, ``per_set`` scores (tensors
    ``[n_layers, n_heads]``), ``threshold`` and the ``heads`` above it.
    """
    check_model(model)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold: expected a number in [0, 1], got {threshold!r}")
    if not isinstance(fold_ln, bool):
        raise ValueError(f"fold_ln: expected True or False, got {fold_ln!r}")
    source = "user" if sets is not None else _ordinal_source(model)[2]
    sets = ordinal_sets(model, gaps=True) if sets is None else _check_sets(model, sets)
    vocab = sorted({i for ids in sets.values() for i in ids if i is not None})
    col = {t: j for j, t in enumerate(vocab)}
    ids = torch.tensor(vocab, device=model.device)
    inputs = [model.embed.weight.detach()[ids], effective_embedding(model, ids, mlp0, ln, resid)]
    logits = [head_logits(model, l, inputs[min(l, 1)], ids, fold_ln) for l in range(model.cfg.n_layers)]
    success = {name: torch.stack([_pair_success(lg, s, col) for lg in logits]).float()
               for name, s in sets.items()}  # name -> [L, H, n_pairs]
    scores = torch.cat(list(success.values()), dim=-1).mean(-1).cpu()
    settings = _settings(model, sets, success, scores, source, threshold,
                         dict(mlp0=mlp0, ln=ln, resid=resid, fold_ln=fold_ln))
    return HeadScores(scores=scores, name="successor", settings=settings)


def _settings(model, sets, success, scores: Tensor, source: str, threshold: float, options: dict) -> dict:
    """The settings of :func:`successor_scores` (see its docstring)."""
    ov_description = ov_factors(model, 0).description
    above = sorted((scores > threshold).nonzero().tolist(), key=lambda lh: -float(scores[lh[0], lh[1]]))
    heads = [[int(l), int(h)] for l, h in above]  # best first
    return {
        "model": model.name or type(model).__name__, "arch": model.cfg.arch,
        "measure": "succession (argmax over the set)", "sets_source": source,
        "sets": {n: list(s) for n, s in sets.items()},
        "sizes": {n: sum(i is not None for i in s) for n, s in sets.items()},
        "pairs": {n: len(_pairs(s)) for n, s in sets.items()},
        "per_set": {n: v.mean(-1).cpu() for n, v in success.items()},
        **options,
        "embedding": embedding_description(model, options["mlp0"], options["ln"], options["resid"]),
        "layer0_input": "W_E[t] (layer 0 reads the embedding before MLP0)",
        "unembed": "Nf W_U (ln_final linear part; 1/scale and bias omitted)" if options["fold_ln"] else "W_U",
        "ov": ov_description, "threshold": threshold, "heads": heads,
    }


# ----------------------------------------------------------------------------- mod-10 structure


def mod_similarity(vectors: Tensor, labels: Sequence[int], n_perm: int = 1000, seed: int = 0) -> dict[str, float]:
    """Whether ``vectors [n, d]`` sharing a label are more alike (Gould et al.'s mod-10 classes):
    ``statistic`` = mean cosine over same-label pairs − mean cosine over different-label pairs,
    and its one-sided permutation ``p_value`` (labels shuffled ``n_perm`` times, seeded; the
    observed labelling counts as one permutation, so p ≥ 1/(n_perm+1))."""
    labels_t = torch.as_tensor(list(labels))
    if vectors.dim() != 2 or len(labels_t) != vectors.shape[0]:
        raise ValueError(f"labels: expected one label per row of vectors {list(vectors.shape)}, got {len(labels_t)}")
    if len(set(labels_t.tolist())) < 2 or len(labels_t) == len(set(labels_t.tolist())):
        raise ValueError("labels: need at least two classes and one class with two members")
    v = torch.nn.functional.normalize(vectors.double(), dim=-1)
    cos, off = v @ v.T, ~torch.eye(len(v), dtype=torch.bool)

    def stat(lab: Tensor) -> float:
        same = (lab[:, None] == lab[None]) & off
        return float(cos[same].mean() - cos[~same & off].mean())

    g = torch.Generator().manual_seed(int(seed))
    observed = stat(labels_t)
    null = [stat(labels_t[torch.randperm(len(labels_t), generator=g)]) for _ in range(int(n_perm))]
    p = (1 + sum(x >= observed for x in null)) / (1 + len(null))
    return {"statistic": observed, "p_value": p, "n_items": len(labels_t), "n_perm": int(n_perm)}


@torch.no_grad()
def head_outputs(model, layer: int, head: int, ids: Sequence[int], fold_ln: bool = True) -> Tensor:
    """What head ``(layer, head)``'s effective OV writes for each token of ``ids``: ``[n, d_model]``
    (inputs as in :func:`successor_scores`: ``W_E`` for layer 0, the effective embedding after)."""
    check_model(model)
    ids_t = torch.tensor([int(i) for i in ids], device=model.device)
    x = model.embed.weight.detach()[ids_t] if layer == 0 else effective_embedding(model, ids_t)
    W_V, W_O, _ = ov_factors(model, layer)
    if fold_ln:
        x = x @ norm_linear(model.blocks[layer].ln1)
    return (x @ W_V[head]) @ W_O[head]


__all__ = ["BYTE_SETS", "GOULD_SETS", "THRESHOLD", "head_logits", "head_outputs", "mod_similarity", "ordinal_sets",
           "successor_scores"]
