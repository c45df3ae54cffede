"""Token-pattern heads: previous-token, duplicate-token and induction heads (docs/methods.md §1).

Every finder reads the (implicit) attention of each layer through ``model.mixer_pattern`` (see
:mod:`seqlens.circuits.patterns`), so it runs on every architecture, and returns a
:class:`~seqlens.circuits.heads.HeadScores` ``[n_layers, n_heads]``.

Measures (``A`` one head's pattern for one sequence, ``P`` the family's 0/1 template, T = L):

- ``"mul"`` (TransformerLens ``head_detector``): zero column 0 of ``A`` if ``exclude_bos``, its
  diagonal if ``exclude_current``, then ``Σ(A⊙P) / ΣA``.
- ``"abs"`` (TransformerLens): ``1 − Σ|A−P| / T`` after zeroing column 0 / the diagonal of
  ``|A−P|``. TransformerLens rounds this to 3 decimals; we do not.
- ``"prefix"``: attention mass on the template, ``mean_i Σ_{j<i} A[i,j] P[i,j]`` over the query
  rows that have a target (``Σ_{j<i} P[i,j] > 0``), pooled over the batch. On the default
  repeated-random-token data the induction version is exactly the prefix-matching score of
  Olsson et al. (2022): ``mean A[i, i−(R−1)]`` over the second copy (``i ≥ R``).

Batches: like TransformerLens' ``detect_head`` on a list of prompts, ``mul`` / ``abs`` score each
sequence on its own template and average the per-sequence scores.

Prompts of different lengths run as right-padded batches (:func:`pad_right`): every model is
causal, so a row's real queries see only its real keys and their patterns equal the prompt's alone;
the pad rows and columns are masked out of every score (``mask`` of :func:`sequence_scores`), so
the result equals scoring each prompt on its own and averaging (``prefix`` too: per prompt, then
the mean over prompts).

Data: ``tokens`` (LongTensor ``[B, L]``), or text ``prompts`` (needs ``model.tokenizer``; each
prompt is scored on its own, batched as above, no BOS is added), or neither: ``batch`` sequences of ``seq_len // 2``
uniform random tokens repeated once (``seq_len`` 100, ``batch`` 10, drawn with ``seed``), after the
model's BOS token when it has one (its tokenizer's, or for a zoo organism its task's — the
organisms rely on it: induction-attn2's heads score 0.80 with it and 0.02 without) and never using
the vocabulary's special tokens (see :func:`special_tokens`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from seqlens.circuits.heads import HeadScores
from seqlens.circuits.patterns import layer_patterns, resolve_normalisation

MEASURES = ("mul", "abs", "prefix")
Template = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- data


def repeated_random_tokens(batch: int = 10, repeat_len: int = 50, vocab_size: int = 256,
                           seed: int | torch.Generator = 0, bos: int | None = None,
                           exclude: Sequence[int] = ()) -> Tensor:
    """``[batch, 2 * repeat_len]`` (``[batch, 1 + 2 * repeat_len]`` with ``bos``): ``repeat_len``
    tokens drawn uniformly from ``[0, vocab_size)`` minus ``exclude`` and ``bos`` (repeats within a
    copy are possible), then the same tokens again, after ``bos`` when given. ``seed``: int or
    torch.Generator."""
    for name, value in (("batch", batch), ("repeat_len", repeat_len), ("vocab_size", vocab_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    banned = set(int(t) for t in exclude) | ({int(bos)} if bos is not None else set())
    allowed = torch.tensor([t for t in range(vocab_size) if t not in banned], dtype=torch.long)
    if allowed.numel() == 0:
        raise ValueError(f"exclude: every token id of the {vocab_size}-token vocabulary is excluded")
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    half = allowed[torch.randint(0, allowed.numel(), (batch, repeat_len), generator=g)]
    parts = [half, half] if bos is None else [torch.full((batch, 1), int(bos)), half, half]
    return torch.cat(parts, dim=1)


def special_tokens(model) -> tuple[int | None, list[int]]:
    """``(bos, specials)`` of ``model``'s vocabulary: from its Hugging Face tokenizer
    (``bos_token_id``, ``all_special_ids``), else from the task a zoo organism was trained on
    (``model.recipe``; e.g. the induction task's BOS 0), else ``(None, [])``."""
    tok = model.tokenizer
    if tok is not None:
        return getattr(tok, "bos_token_id", None), list(getattr(tok, "all_special_ids", []) or [])
    recipe = model.recipe
    if recipe is not None:
        from seqlens.tasks import task_vocab

        specials = dict(task_vocab(recipe).specials)
        return specials.get("bos"), sorted(set(specials.values()))
    return None, []


def _tokenize(model, prompts: str | Sequence[str]) -> list[Tensor]:
    """Each prompt as a ``[1, L]`` LongTensor, via ``model.tokenizer`` (no BOS added)."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("prompts: this model has no tokenizer (model.tokenizer is None); "
                         "pass token ids with tokens=[B, L] instead")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: expected a non-empty string or list of non-empty strings")
    return [torch.tensor([tok(p, add_special_tokens=False)["input_ids"]], dtype=torch.long)
            for p in prompts]


def pad_right(seqs: Sequence[Tensor], pad: int = 0) -> tuple[Tensor, Tensor]:
    """``(tokens [N, L], mask [N, L] bool)`` of ``seqs`` (each ``[1, n]`` or ``[n]``) padded on the
    right with ``pad`` to the longest: exact for causal models without any attention mask (a real
    position never reads a later one), so the analyses only mask pads out of their scores."""
    rows = [t.reshape(-1) for t in seqs]
    L = max(len(r) for r in rows)
    tokens = torch.full((len(rows), L), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], mask[i, :len(r)] = r, True
    return tokens, mask


def padded_batches(seqs: Sequence[Tensor], per_row: Callable[[int], int],
                   budget: int = 2**25) -> list[tuple[Tensor, Tensor]]:
    """:func:`pad_right` batches of ``seqs`` in order, each holding at most ``budget`` floats by
    ``per_row(L)`` (the floats one row of length L needs; at least one row per batch)."""
    out, start = [], 0
    while start < len(seqs):
        stop = start + 1
        while stop < len(seqs) and (stop + 1 - start) * per_row(max(s.numel() for s in seqs[start:stop + 1])) <= budget:
            stop += 1
        out.append(pad_right(seqs[start:stop]))
        start = stop
    return out


DefaultData = Callable[..., tuple[Tensor, dict]]


def resolve_data(model, tokens: Tensor | None, prompts, seq_len: int, batch: int, seed: int,
                 default: DefaultData | None = None) -> tuple[list[Tensor], dict, tuple[int, int] | None]:
    """``(token batches, settings entries, period)``: what the finders score. ``period`` is
    ``(R, start)`` for the default repeated-random-token data (the repeat length and the index of
    the first token of the first copy: 1 after a BOS, else 0), None for other data. ``default``:
    ``default(model, seq_len, batch, seed) -> (tokens, settings)`` replaces the repeated random
    tokens when neither ``tokens`` nor ``prompts`` is given."""
    if tokens is not None and prompts is not None:
        raise ValueError("tokens, prompts: pass one of them, not both")
    if prompts is not None:
        return _tokenize(model, prompts), {"data": "prompts", "n_prompts": 1 if isinstance(prompts, str)
                                           else len(prompts)}, None
    if tokens is not None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens: expected a LongTensor [batch, seq_len], got "
                             f"{list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
        return [tokens.long()], {"data": "tokens", "batch": tokens.shape[0], "seq_len": tokens.shape[1]}, None
    if default is not None:
        data, info = default(model, seq_len, batch, seed)
        return [data], info, None
    if not isinstance(seq_len, int) or seq_len < 4 or seq_len % 2:
        raise ValueError(f"seq_len: expected an even integer >= 4, got {seq_len!r}")
    bos, specials = special_tokens(model)
    data = repeated_random_tokens(batch, seq_len // 2, model.cfg.vocab_size, seed, bos=bos, exclude=specials)
    info = {"data": "repeated_random_tokens", "batch": batch, "seq_len": data.shape[1],
            "repeat_len": seq_len // 2, "bos": bos, "excluded_tokens": specials, "seed": seed}
    return [data], info, (seq_len // 2, 0 if bos is None else 1)


# ----------------------------------------------------------------------------- templates


def previous_token_template(tokens: Tensor) -> Tensor:
    """``P[b, i, j] = 1[j = i − 1]``, ``[B, L, L]`` float, for ``tokens [B, L]``."""
    B, L = tokens.shape
    return torch.diag(torch.ones(L - 1), -1).expand(B, L, L).clone()


def duplicate_token_template(tokens: Tensor) -> Tensor:
    """``P[b, i, j] = 1[x_i = x_j, j < i]``, ``[B, L, L]`` float (the current token excluded)."""
    same = tokens[:, :, None] == tokens[:, None, :]
    return torch.tril(same.float(), diagonal=-1)


def induction_template(tokens: Tensor) -> Tensor:
    """``P[b, i, j] = 1[x_i = x_{j−1}, 1 ≤ j ≤ i]``, ``[B, L, L]`` float: the token after an
    earlier occurrence of the current token (TransformerLens' duplicate template shifted right by
    one key; ``j = i`` counts when ``x_{i−1} = x_i``)."""
    dup = duplicate_token_template(tokens)
    out = torch.zeros_like(dup)
    out[:, :, 1:] = dup[:, :, :-1]
    return torch.tril(out)


# ----------------------------------------------------------------------------- scores


def template_score(pattern: Tensor, template: Tensor, measure: str = "mul", exclude_bos: bool = False,
                   exclude_current: bool = False) -> Tensor:
    """TransformerLens' similarity score of ``pattern [B, H, L, L]`` with ``template [B, L, L]``
    (or ``[L, L]``), averaged over the batch: ``[H]``.

    ``mul``: ``Σ(A'⊙P)/ΣA'`` with A' = A with column 0 (``exclude_bos``) / the diagonal
    (``exclude_current``) zeroed. ``abs``: ``1 − Σ D'/L``, D' = |A−P| with the same entries zeroed
    (TransformerLens rounds to 3 decimals; this does not).
    """
    if measure not in ("mul", "abs"):
        raise ValueError(f"measure: expected 'mul' or 'abs' for a template score, got {measure!r}")
    return sequence_scores(pattern, template, measure, exclude_bos, exclude_current).mean(0)


def sequence_scores(pattern: Tensor, template: Tensor, measure: str = "mul", exclude_bos: bool = False,
                    exclude_current: bool = False, mask: Tensor | None = None) -> Tensor:
    """Per-sequence scores ``[B, H]`` (:func:`template_score` before the batch mean; ``"prefix"``:
    :func:`prefix_score` of each sequence alone). ``mask [B, L]`` (bool, True = real token) restricts
    row b to its real queries and keys, L to its real length: a right-padded row scores as alone."""
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern: expected [B, H, L, L], got {list(pattern.shape)}")
    B, _, L, _ = pattern.shape
    P = template.to(pattern)[None] if template.dim() == 2 else template.to(pattern)[:, None]
    real = torch.ones(B, L, dtype=torch.bool, device=pattern.device) if mask is None else mask.to(pattern.device)
    M = (real[:, :, None] & real[:, None, :])[:, None].to(pattern.dtype)  # [B, 1, L, L]: real query, real key
    if measure == "prefix":
        P = torch.tril(P.expand(B, 1, L, L), diagonal=-1) * M
        rows = (P.sum(-1) > 0).to(pattern.dtype)  # [B, 1, L]: queries with a target
        return ((pattern * P).sum(-1) * rows).sum(-1) / rows.sum(-1)  # 0 / 0 = NaN: no target
    keep = torch.ones(L, L, dtype=pattern.dtype, device=pattern.device)
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current:
        keep.fill_diagonal_(0)
    keep = keep * M
    if measure == "mul":
        A = pattern * keep
        return (A * P).sum((-1, -2)) / A.sum((-1, -2))
    if measure == "abs":
        return 1 - ((pattern - P).abs() * keep).sum((-1, -2)) / real.sum(-1, keepdim=True).to(pattern.dtype)
    raise ValueError(f"measure: expected one of {list(MEASURES)}, got {measure!r}")


def prefix_score(pattern: Tensor, template: Tensor, period: int | None = None, start: int = 0) -> Tensor:
    """Attention mass on the template, ``[H]``: ``mean_i Σ_{j<i} A[i,j]P[i,j]`` over the query rows
    (of every sequence) with a target. With ``period`` R (repeated random tokens: ``start`` tokens,
    e.g. a BOS, then R tokens twice) it is the prefix-matching score
    ``mean_{i ≥ start+R} A[i, i−(R−1)]`` and ``template`` is ignored."""
    B, H, L, _ = pattern.shape
    if period is not None:
        if not 2 <= period <= L - 1 - start:
            raise ValueError(f"period: expected an integer in [2, {L - 1 - start}], got {period!r}")
        diag = pattern.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)  # query i = k + R - 1
        return diag[..., start + 1:].mean((0, -1))  # queries start + R .. L-1
    P = torch.tril(template.to(pattern), diagonal=-1)
    P = P[None].expand(B, L, L) if P.dim() == 2 else P
    rows = P.sum(-1) > 0  # [B, L]
    if not bool(rows.any()):
        return torch.full((H,), float("nan"), device=pattern.device)
    mass = (pattern * P[:, None]).sum(-1)  # [B, H, L]
    return (mass * rows[:, None]).sum((0, -1)) / rows.sum()


# ----------------------------------------------------------------------------- finders


def _score_layers(patterns: list[Tensor], toks: Tensor, template_fn: Template, measure: str,
                  exclude_bos: bool, exclude_current: bool, period: tuple[int, int] | None) -> Tensor:
    """``[n_layers, H]`` scores of the per-layer ``patterns [B, H, L, L]`` of ``toks [B, L]``
    (``period``: ``(R, start)`` of repeated random tokens, for the prefix score)."""
    template = template_fn(toks.cpu())
    if measure == "prefix":
        R, start = period if period is not None else (None, 0)
        return torch.stack([prefix_score(p, template, R, start) for p in patterns])
    return torch.stack([template_score(p, template, measure, exclude_bos, exclude_current)
                        for p in patterns])


def _prompt_scores(model, prompts: list[Tensor], template_fn: Template, measure: str, exclude_bos: bool,
                   exclude_current: bool, mode: str) -> list[Tensor]:
    """Per-prompt scores ``[n_layers, H]`` (one tensor per prompt) of prompts of any lengths, from
    right-padded batches of at most ~2^25 pattern floats (module docstring)."""
    per_row = lambda L: model.cfg.n_layers * model.n_groups * L * L  # noqa: E731
    out = []
    for toks, mask in padded_batches(prompts, per_row):
        patterns = layer_patterns(model, toks.to(model.device), mode)
        template = template_fn(toks)
        per_seq = torch.stack([sequence_scores(p, template, measure, exclude_bos, exclude_current, mask)
                               for p in patterns], 1)  # [b, n_layers, H]
        out += list(per_seq.cpu())
    return out


def token_head_scores(model, name: str, template_fn: Template, tokens: Tensor | None = None,
                      prompts: str | Sequence[str] | None = None, measure: str = "mul",
                      seq_len: int = 100, batch: int = 10, seed: int = 0, exclude_bos: bool = False,
                      exclude_current: bool = False, normalisation: str = "auto",
                      default_data: DefaultData | None = None, extra_settings: dict | None = None) -> HeadScores:
    """Shared body of the finders: score every layer's pattern against ``template_fn(tokens)``
    (``[B, L] -> [B, L, L]``) and return ``HeadScores`` ``[n_layers, n_heads]`` (see the module
    docstring for data, measures and batch averaging; ``default_data`` as in :func:`resolve_data`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {list(MEASURES)}, got {measure!r}")
    batches, data_info, period = resolve_data(model, tokens, prompts, seq_len, batch, seed, default_data)
    short = [list(t.shape) for t in batches if t.shape[-1] < 2]
    if short:  # one token has no earlier key: every score would be NaN or vacuous
        arg = "prompts" if data_info["data"] == "prompts" else "tokens"
        raise ValueError(f"{arg}: {name} scores need sequences of at least 2 tokens, got shape {short[0]}")
    mode = resolve_normalisation(model, normalisation)
    if data_info["data"] == "prompts":
        scores = _prompt_scores(model, batches, template_fn, measure, exclude_bos, exclude_current, mode)
    else:
        scores = []
        for toks in batches:
            toks = toks.to(model.device)
            scores.append(_score_layers(layer_patterns(model, toks, mode), toks, template_fn, measure,
                                        exclude_bos, exclude_current, period if name == "induction" else None))
    settings = {
        "model": model.name or type(model).__name__, "arch": model.cfg.arch,
        **data_info, "measure": measure, "exclude_bos": exclude_bos, "exclude_current": exclude_current,
        "normalisation": mode, "pattern": "softmax" if model.is_softmax
        else "implicit attention (METHODS.md §7)", "backend": "torch (SeqModel.mixer_pattern)", **(extra_settings or {}),
    }
    return HeadScores(scores=torch.stack(scores).mean(0).cpu(), name=name, settings=settings)


def previous_token_scores(model, tokens: Tensor | None = None, prompts: str | Sequence[str] | None = None,
                          measure: str = "mul", **kwargs) -> HeadScores:
    """Previous-token head scores ``[n_layers, n_heads]`` (template ``P[i, i−1] = 1``). Keyword
    arguments (``seq_len``, ``batch``, ``seed``, ``exclude_bos``, ``exclude_current``,
    ``normalisation``) as in :func:`token_head_scores`."""
    return token_head_scores(model, "previous_token", previous_token_template, tokens, prompts,
                             measure, **kwargs)


def duplicate_token_scores(model, tokens: Tensor | None = None, prompts: str | Sequence[str] | None = None,
                           measure: str = "mul", **kwargs) -> HeadScores:
    """Duplicate-token head scores ``[n_layers, n_heads]`` (template ``P[i,j] = 1[x_i = x_j, j<i]``);
    other arguments as in :func:`previous_token_scores`."""
    return token_head_scores(model, "duplicate_token", duplicate_token_template, tokens, prompts,
                             measure, **kwargs)


def induction_scores(model, tokens: Tensor | None = None, prompts: str | Sequence[str] | None = None,
                     measure: str = "prefix", **kwargs) -> HeadScores:
    """Induction head scores ``[n_layers, n_heads]`` (template ``P[i,j] = 1[x_i = x_{j−1}, j ≤ i]``).
    The default, ``measure="prefix"`` on the default data, is Olsson et al.'s prefix-matching score
    ``mean_{i≥R} A[i, i−(R−1)]`` on R = ``seq_len // 2`` random tokens repeated once; ``"mul"`` /
    ``"abs"`` give TransformerLens' template scores. Other arguments as in
    :func:`previous_token_scores`."""
    return token_head_scores(model, "induction", induction_template, tokens, prompts, measure, **kwargs)
