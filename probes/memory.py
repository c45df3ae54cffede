"""Verbatim short-term memory: repeat surprisal (Armeni, Honey & Linzen 2022; docs/methods.md §9).

The paradigm: an intro, list 1 of ``k`` nouns, intervening text, a cue, list 2 — list 1 again
(``"repeat"``), its nouns in a new order (``"permute"``) or new nouns (``"novel"``). A model that
retrieves list 1 verbatim from its context finds list 2 much less surprising when it repeats.

Definitions (one trial = one prompt):

- a noun's surprisal is the **sum** of its tokens' surprisals ``−ln p(token | prefix)`` (nats),
  so multi-token (and, at byte level, multi-byte) nouns count as whole words;
- ``x1`` / ``x2``: the mean noun surprisal over list 1 / list 2, **first noun of each list
  excluded** (it cannot be predicted from the list);
- repeat surprisal ``= 100 · x2 / x1`` (%): 100 % means list 2 is as surprising as list 1;
- per cell (condition × set size × intervening length): the median over trials with a
  percentile-bootstrap CI (``n_boot`` resamples of the trials, seeded per cell).

Three prompt families, picked from the model (``mode=None``) or forced with ``mode``:

- ``"tokenizer"`` (``model.tokenizer`` set): :func:`seqlens.tasks.noun_lists` text encoded with
  the tokenizer, its ``bos_token_id`` (when it has one) prepended;
- ``"bytes"`` (a byte-level recipe such as ``corpus:stdlib``, or no recipe and ``vocab_size ==
  256``): the same text as UTF-8 bytes, no BOS (the stdlib corpus has none);
- ``"tokens"`` (anything else, e.g. a ``task:*`` organism with a 64-id vocabulary): a synthetic
  analogue, ``[BOS] list 1 · intervening · list 2``. Per trial the usable ids (the vocabulary
  minus the recipe's special ids: BOS, pad, separators, ...) are shuffled; list 1 and the novel
  list take ``2k`` of them, the intervening tokens are drawn uniformly (with replacement) from the
  rest, so filler never contains a list noun. Each "noun" is one token. BOS (the recipe's
  ``bos``) is prepended when the vocabulary has one. There is no intro or cue.

Intervening length: exactly ``intervening`` tokens (bytes at byte level). For text, the filler is
:func:`~seqlens.tasks.noun_lists`'s run of whole ``MEMORY_FILLER`` sentences cut to that many
tokens (so a cut may fall inside a sentence or a word: with bytes one sentence is ~60 tokens, and
whole sentences would make 8 and 32 the same length); all lengths share one filler, each a prefix
of the next, and list 1 / the intervening text are shared by all conditions (paired design).

Context: every prompt must fit ``model.context_limit`` (a learned position table's ``n_ctx``;
recurrent models and rotary / decay positions have no hard limit and take any length). All prompts are built before the model runs;
with ``overflow="error"`` (default) any longer prompt raises a ValueError naming ``set_sizes`` /
``intervening`` and the lengths needed. ``overflow="trim"`` instead drops the first tokens of the
intro of the rows that are too long (never BOS, never list 1; a row that still does not fit is
an error) — the sliding-window convention; the number of trimmed rows is recorded in
``settings["trimmed_rows"]``. Only text prompts have an intro to trim.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlens import tasks
from seqlens.text import encode, is_byte_level
from seqlens.result import Result

CONDITIONS = tasks.NOUN_CONDITIONS  # ("repeat", "permute", "novel")
MODES = ("tokenizer", "bytes", "tokens")
OVERFLOW = ("error", "trim")
UNITS = "nats"

__all__ = ["CONDITIONS", "MemoryPrompts", "MemoryResult", "bootstrap_median_ci", "memory_prompts",
           "noun_surprisal", "repeat_surprisal"]


# ----------------------------------------------------------------------------- prompts


@dataclass(eq=False)
class MemoryPrompts:
    """One cell's prompts: ``tokens [N, L]`` right-padded, ``lengths [N]``, and the token spans
    ``[start, end)`` of every noun, ``spans1`` / ``spans2`` ``LongTensor[N, k, 2]``.
    ``list1`` / ``list2``: the nouns per trial (words, or token ids in ``"tokens"`` mode)."""

    tokens: Tensor
    lengths: Tensor
    spans1: Tensor
    spans2: Tensor
    list1: list[list[Any]]
    list2: list[list[Any]]
    condition: str
    intervening: int
    pad: int = 0
    trimmed: int = 0  # rows whose intro was trimmed to fit n_ctx (overflow="trim")


def _resolve_mode(model, mode: str | None) -> str:
    """The prompt family for ``model`` (see the module docstring)."""
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES} or None (automatic), got {mode!r}")
        if mode == "tokenizer" and model.tokenizer is None:
            raise ValueError("mode: 'tokenizer' needs model.tokenizer, which is None")
        return mode
    if model.tokenizer is not None:
        return "tokenizer"
    recipe = model.recipe
    if recipe is None:
        return "bytes" if is_byte_level(model) else "tokens"
    return "bytes" if _recipe_vocab(recipe).byte_level else "tokens"


def _recipe_vocab(recipe) -> tasks.TaskVocab:
    from seqlens.tasks import task_vocab

    return task_vocab(recipe)


def _token_specials(model) -> dict[str, int]:
    """Special ids of ``model``'s training data (empty without a recipe)."""
    recipe = model.recipe
    return {} if recipe is None else dict(_recipe_vocab(recipe).specials)


def _text_cell(tokenizer, set_size: int, condition: str, intervening: Sequence[int], n_trials: int,
               seed: int) -> list[MemoryPrompts]:
    """``noun_lists`` prompts with the filler cut to each length in ``intervening``."""
    longest = max(intervening)
    batch = tasks.noun_lists(n_trials, set_size, condition, longest, seed=seed, tokenizer=tokenizer)
    # noun_lists encodes list 1's closing "." as its own piece, with the same encode()
    n_dot, n_fill = len(encode(".", tokenizer)), int(batch.meta["intervening_tokens"])
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    rows = batch.meta["list2_spans"][:, -1, 1] + n_dot  # each row ends with list 2 and "."
    out = []
    for il in intervening:
        toks, spans1, spans2 = [], batch.meta["list1_spans"].clone(), batch.meta["list2_spans"].clone()
        for b in range(n_trials):
            row = batch.tokens[b, : int(rows[b])].tolist()
            start = int(spans1[b, -1, 1]) + n_dot  # the filler follows list 1's "."
            row = row[: start + il] + row[start + n_fill:]
            toks.append(([] if bos is None else [int(bos)]) + row)
        spans2 -= n_fill - il
        shift = 0 if bos is None else 1
        out.append(_pack(toks, spans1 + shift, spans2 + shift, batch.meta["list1"],
                         batch.meta["list2"], condition, il, batch.vocab.pad))
    return out


def _token_cell(vocab_size: int, specials: dict[str, int], set_size: int, condition: str,
                intervening: Sequence[int], n_trials: int, seed: int) -> list[MemoryPrompts]:
    """Synthetic-vocabulary prompts ``[BOS] list1 · filler · list2`` (module docstring)."""
    usable = torch.tensor([i for i in range(vocab_size) if i not in set(specials.values())])
    need = 2 * set_size + (1 if max(intervening) > 0 else 0)
    if len(usable) < need:
        raise ValueError(f"set_sizes: {set_size} needs {need} non-special token ids (2 lists + filler), "
                         f"the vocabulary has {len(usable)}")
    g = tasks.make_generator(seed)
    longest = max(intervening)
    trials = []
    for _ in range(n_trials):  # draws do not depend on the condition (paired design)
        ids = usable[torch.randperm(len(usable), generator=g)]
        first, novel, pool = ids[:set_size], ids[set_size: 2 * set_size], ids[2 * set_size:]
        filler = pool[torch.randint(len(pool), (longest,), generator=g)] if longest else ids[:0]
        perm = torch.randperm(set_size, generator=g)
        if set_size > 1 and torch.equal(perm, torch.arange(set_size)):
            perm = perm.roll(-1)  # never the identity, as in noun_lists
        second = {"repeat": first, "permute": first[perm], "novel": novel}[condition]
        trials.append((first.tolist(), filler.tolist(), second.tolist()))
    bos = [specials["bos"]] if "bos" in specials else []
    out = []
    for il in intervening:
        toks = [bos + a + f[:il] + b for a, f, b in trials]
        s1 = len(bos) + torch.arange(set_size)
        s2 = s1 + set_size + il
        spans1 = torch.stack([s1, s1 + 1], -1).expand(n_trials, -1, -1)
        spans2 = torch.stack([s2, s2 + 1], -1).expand(n_trials, -1, -1)
        out.append(_pack(toks, spans1, spans2, [t[0] for t in trials], [t[2] for t in trials],
                         condition, il, specials.get("pad", specials.get("bos", 0))))
    return out


def _pack(rows: list[list[int]], spans1: Tensor, spans2: Tensor, list1, list2, condition: str,
          intervening: int, pad: int) -> MemoryPrompts:
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return MemoryPrompts(tokens, lengths, spans1.clone(), spans2.clone(), [list(a) for a in list1],
                         [list(b) for b in list2], condition, int(intervening), int(pad))


def _trim(p: MemoryPrompts, n_ctx: int, keep: int) -> MemoryPrompts:
    """Drop intro tokens (after the first ``keep`` tokens, i.e. BOS) of rows longer than ``n_ctx``."""
    rows, spans1, spans2, trimmed = [], p.spans1.clone(), p.spans2.clone(), 0
    for b in range(len(p.lengths)):
        n = int(p.lengths[b])
        row, drop = p.tokens[b, :n].tolist(), max(0, n - n_ctx)
        if drop > int(spans1[b, 0, 0]) - keep:
            raise ValueError(f"set_sizes / intervening: a {n}-token prompt (set size {spans1.shape[1]}, "
                             f"intervening {p.intervening}) does not fit n_ctx={n_ctx} even without "
                             "its intro")
        if drop:
            row, trimmed = row[:keep] + row[keep + drop:], trimmed + 1
            spans1[b] -= drop
            spans2[b] -= drop
        rows.append(row)
    out = _pack(rows, spans1, spans2, p.list1, p.list2, p.condition, p.intervening, p.pad)
    out.trimmed = trimmed
    return out


def memory_prompts(model, set_size: int, intervening: Sequence[int] | int, condition: str = "repeat",
                   n_trials: int = 50, seed: int = 0, mode: str | None = None) -> list[MemoryPrompts]:
    """The prompts of one (set size, condition) for each length in ``intervening`` (a list, one
    :class:`MemoryPrompts` per length; an int gives a one-element list). No n_ctx check here."""
    mode = _resolve_mode(model, mode)
    ivs = [intervening] if isinstance(intervening, numbers.Integral) else list(intervening)
    if condition not in CONDITIONS:
        raise ValueError(f"condition: expected one of {CONDITIONS}, got {condition!r}")
    if mode == "tokens":
        return _token_cell(model.cfg.vocab_size, _token_specials(model), set_size, condition, ivs,
                           n_trials, seed)
    return _text_cell(model.tokenizer if mode == "tokenizer" else None, set_size, condition, ivs,
                      n_trials, seed)


# ----------------------------------------------------------------------------- surprisal


@torch.no_grad()
def noun_surprisal(model, prompts: MemoryPrompts, batch_size: int = 16) -> Tensor:
    """Per-noun surprisal ``[N, 2, k]`` (nats; ``[:, 0]`` list 1, ``[:, 1]`` list 2): the sum over
    a noun's tokens ``t ∈ [start, end)`` of ``−ln softmax(logits[t−1])[tokens[t]]``. A noun at
    position 0 has no prediction and gets NaN (only possible for an uncounted first noun)."""
    device = next(model.parameters()).device
    parts = []
    for rows in torch.arange(len(prompts.tokens)).split(batch_size):
        toks = prompts.tokens[rows].to(device)
        logits = model(toks)[:, :-1].float()
        tok = torch.logsumexp(logits, -1) - logits.gather(-1, toks[:, 1:, None])[..., 0]
        parts.append(tok.double().cpu())
    per_token = torch.cat(parts)  # [N, L-1]: surprisal of tokens[:, 1:]
    cum = torch.nn.functional.pad(per_token.cumsum(1), (2, 0))  # cum[:, t] = Σ surprisal of tokens 1..t-1
    spans = torch.stack([prompts.spans1, prompts.spans2], 1)  # [N, 2, k, 2]
    start, end = spans[..., 0], spans[..., 1]
    flat = lambda idx: cum.gather(1, idx.flatten(1)).view_as(idx)  # noqa: E731
    out = flat(end) - flat(start.clamp_min(1))
    return out.masked_fill(start < 1, float("nan")).float()


def bootstrap_median_ci(values: Tensor | Sequence[float], n_boot: int = 1000, ci: float = 0.95,
                        seed: int | Sequence[int] = 0) -> tuple[float, float, float, int]:
    """``(median, low, high, n)`` of the finite ``values``: the sample median and the percentile
    bootstrap CI (``n_boot`` resamples with replacement, quantiles ``(1 ± ci) / 2`` of their
    medians; numpy's generator seeded with ``seed``). NaNs when no value is finite."""
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, len(v), size=(n_boot, len(v)))], axis=1)
    low, high = np.quantile(medians, [(1 - ci) / 2, (1 + ci) / 2])
    return float(np.median(v)), float(low), float(high), len(v)


# ----------------------------------------------------------------------------- result


@dataclass(kw_only=True)
class MemoryResult(Result):
    """Repeat surprisal per cell. Axes: ``conditions`` (C) × ``set_sizes`` (S) × ``intervening``
    (I). ``x1`` / ``x2`` ``[C, S, I, n_trials]``: per-trial mean noun surprisal of list 1 / list 2
    (nats, first noun excluded); ``median`` / ``ci_low`` / ``ci_high`` ``[C, S, I]``: median repeat
    surprisal ``100·x2/x1`` (%) over trials and its bootstrap CI; ``n [C, S, I]``: trials with a
    finite ratio; ``seq_len [C, S, I]``: the longest prompt of the cell (tokens)."""

    conditions: list[str]
    set_sizes: list[int]
    intervening: list[int]
    x1: Tensor
    x2: Tensor
    median: Tensor
    ci_low: Tensor
    ci_high: Tensor
    n: Tensor
    seq_len: Tensor

    def __post_init__(self) -> None:
        shape = (len(self.conditions), len(self.set_sizes), len(self.intervening))
        for name in ("x1", "x2", "median", "ci_low", "ci_high", "n", "seq_len"):
            value = torch.as_tensor(getattr(self, name))
            setattr(self, name, value)
            trials = name in ("x1", "x2")
            if value.dim() != 3 + trials or tuple(value.shape[:3]) != shape:
                want = list(shape) + (["n_trials"] if trials else [])
                raise ValueError(f"{name}: expected shape {want}, got {list(value.shape)}")

    @property
    def ratio(self) -> Tensor:
        """Per-trial repeat surprisal ``100·x2/x1`` (%), ``[C, S, I, n_trials]``."""
        return 100.0 * self.x2 / self.x1

    def cell(self, condition: str, set_size: int, intervening: int) -> dict[str, float]:
        """``{"median", "ci_low", "ci_high", "n"}`` of one cell (KeyError-free: ValueError names
        the axis whose value is missing)."""
        idx = []
        for axis, value in (("conditions", condition), ("set_sizes", set_size), ("intervening", intervening)):
            values = getattr(self, axis)
            if value not in values:
                raise ValueError(f"{axis}: {value!r} was not measured; have {values}")
            idx.append(values.index(value))
        c, s, i = idx
        return {k: float(getattr(self, k)[c, s, i]) for k in ("median", "ci_low", "ci_high", "n")}

    def to_frame(self):
        """``pandas.DataFrame``, one row per condition × set size × intervening length:
        ``condition, set_size, intervening, median, ci_low, ci_high, n`` (repeat surprisal, %),
        ``x1_median, x2_median`` (nats) and ``seq_len``."""
        import pandas as pd

        rows = []
        for c, cond in enumerate(self.conditions):
            for s, k in enumerate(self.set_sizes):
                for i, il in enumerate(self.intervening):
                    rows.append({"condition": cond, "set_size": k, "intervening": il,
                                 "median": float(self.median[c, s, i]), "ci_low": float(self.ci_low[c, s, i]),
                                 "ci_high": float(self.ci_high[c, s, i]), "n": int(self.n[c, s, i]),
                                 "x1_median": float(self.x1[c, s, i].nanmedian()),
                                 "x2_median": float(self.x2[c, s, i].nanmedian()),
                                 "seq_len": int(self.seq_len[c, s, i])})
        return pd.DataFrame(rows)

    def trials_frame(self):
        """Long ``pandas.DataFrame`` of every trial: ``condition, set_size, intervening, trial, x1,
        x2, repeat_surprisal``."""
        import pandas as pd

        C, S, I, N = self.x1.shape
        grid = np.indices((C, S, I, N)).reshape(4, -1)
        return pd.DataFrame({
            "condition": [self.conditions[c] for c in grid[0]],
            "set_size": [self.set_sizes[s] for s in grid[1]],
            "intervening": [self.intervening[i] for i in grid[2]],
            "trial": grid[3], "x1": self.x1.flatten().tolist(), "x2": self.x2.flatten().tolist(),
            "repeat_surprisal": self.ratio.flatten().tolist()})

    def figure(self, **layout: Any):
        """Armeni et al.'s plot: median repeat surprisal (%) vs intervening length, one panel per
        set size, one line per condition, error bars = bootstrap CI, a dotted line at 100 %."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        colours = {"repeat": "#1f77b4", "permute": "#ff7f0e", "novel": "#2ca02c"}
        fig = make_subplots(rows=1, cols=len(self.set_sizes), shared_yaxes=True,
                            subplot_titles=[f"set size {k}" for k in self.set_sizes])
        x = [str(il) for il in self.intervening]
        for c, cond in enumerate(self.conditions):
            for s in range(len(self.set_sizes)):
                med, lo = self.median[c, s].tolist(), self.ci_low[c, s].tolist()
                hi = self.ci_high[c, s].tolist()
                fig.add_trace(go.Scatter(
                    x=x, y=med, mode="lines+markers", name=cond, legendgroup=cond, showlegend=s == 0,
                    line={"color": colours.get(cond)},
                    error_y={"type": "data", "symmetric": False, "array": [h - m for h, m in zip(hi, med)],
                             "arrayminus": [m - l for m, l in zip(med, lo)]}), row=1, col=s + 1)
                fig.add_hline(y=100, line_dash="dot", line_color="grey", row=1, col=s + 1)
        fig.update_xaxes(title_text=f"intervening ({self.settings.get('unit', 'tokens')})", type="category")
        fig.update_yaxes(title_text="repeat surprisal (%)", col=1)
        name = self.settings.get("model") or ""
        fig.update_layout(title=f"Verbatim memory{': ' + name if name else ''} (median, "
                                f"{int(100 * self.settings.get('ci', 0.95))}% bootstrap CI)")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


# ----------------------------------------------------------------------------- analysis


def _check_args(set_sizes, intervening, conditions, n_trials, n_boot, ci, overflow, batch_size):
    def ints(name, values, low):
        if isinstance(values, numbers.Integral) or not isinstance(values, Sequence) or not len(values):
            raise ValueError(f"{name}: expected a non-empty sequence of integers, got {values!r}")
        for v in values:
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}: expected integers >= {low}, got {v!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name}: values repeat in {values!r}")
        return [int(v) for v in values]

    set_sizes, intervening = ints("set_sizes", set_sizes, 2), ints("intervening", intervening, 0)
    if max(set_sizes) > len(tasks.NOUNS) // 2:
        raise ValueError(f"set_sizes: at most {len(tasks.NOUNS) // 2} nouns per list, got {max(set_sizes)}")
    if isinstance(conditions, str) or not conditions or any(c not in CONDITIONS for c in conditions) \
            or len(set(conditions)) != len(conditions):
        raise ValueError(f"conditions: expected distinct values from {CONDITIONS}, got {conditions!r}")
    for name, value, low in (("n_trials", n_trials, 2), ("n_boot", n_boot, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise ValueError(f"ci: expected a level in (0, 1), got {ci!r}")
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow: expected one of {OVERFLOW}, got {overflow!r}")
    return set_sizes, intervening, list(conditions)


def _fit_context(cells: dict, n_ctx: int | None, overflow: str, has_bos: bool) -> dict:
    """Check every prompt against ``n_ctx`` (see the module docstring); trims when asked. ``None``
    (no hard limit: recurrent models, rotary or decay positions) accepts any length."""
    if n_ctx is None:
        return cells
    too_long = sorted({(k, p.intervening, int(p.lengths.max())) for (k, _), ps in cells.items()
                       for p in ps if int(p.lengths.max()) > n_ctx})
    if not too_long:
        return cells
    if overflow == "error":
        detail = ", ".join(f"set size {k} / intervening {il}: {n}" for k, il, n in too_long)
        raise ValueError(f"set_sizes / intervening: prompts longer than the model's n_ctx={n_ctx} tokens "
                         f"({detail}); use smaller set_sizes or intervening, or overflow='trim' to cut "
                         "the start of the intro")
    return {key: [_trim(p, n_ctx, int(has_bos)) for p in ps] for key, ps in cells.items()}


def repeat_surprisal(model, set_sizes: Sequence[int] = (3, 5, 7, 10),
                     intervening: Sequence[int] = (8, 32, 128),
                     conditions: Sequence[str] = CONDITIONS, n_trials: int = 50, seed: int = 0,
                     n_boot: int = 1000, ci: float = 0.95, mode: str | None = None,
                     overflow: str = "error", batch_size: int = 16,
                     progress: bool = True) -> MemoryResult:
    """Verbatim short-term memory (Armeni et al. 2022): median repeat surprisal ``100·x2/x1`` (%)
    with a bootstrap CI for every condition × set size × intervening length (module docstring
    for the definitions, prompt ``mode``\\ s and the ``overflow`` policy).

    ``n_trials`` prompts per cell (the same list 1 and intervening text in every condition and
    length, seed ``seed``); surprisal in nats; ``n_boot`` bootstrap resamples at level ``ci``,
    seeded per cell from ``seed``. Bad arguments raise ValueError naming the argument.
    """
    set_sizes, intervening, conditions = _check_args(set_sizes, intervening, conditions, n_trials,
                                                     n_boot, ci, overflow, batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    mode = _resolve_mode(model, mode)
    cells = {(k, cond): memory_prompts(model, k, intervening, cond, n_trials, int(seed), mode)
             for k in set_sizes for cond in conditions}
    has_bos = (mode == "tokens" and "bos" in _token_specials(model)
               or mode == "tokenizer" and getattr(model.tokenizer, "bos_token_id", None) is not None)
    cells = _fit_context(cells, model.context_limit, overflow, has_bos)
    shape = (len(conditions), len(set_sizes), len(intervening))
    x = torch.full((2, *shape, n_trials), math.nan)
    stats = torch.full((4, *shape), math.nan)
    seq_len = torch.zeros(shape, dtype=torch.long)
    trimmed = 0
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    try:
        with tqdm(total=math.prod(shape), desc="repeat surprisal", disable=not progress) as bar:
            for (k, cond), prompts in cells.items():
                c, s = conditions.index(cond), set_sizes.index(k)
                for i, p in enumerate(prompts):
                    nouns = noun_surprisal(model, p, batch_size)  # [N, 2, k]
                    x[:, c, s, i] = nouns[:, :, 1:].mean(-1).T  # first noun excluded
                    cell_seed = [int(seed), CONDITIONS.index(cond), k, p.intervening]
                    stats[:, c, s, i] = torch.tensor(bootstrap_median_ci(
                        100.0 * x[1, c, s, i] / x[0, c, s, i], n_boot, ci, cell_seed))
                    seq_len[c, s, i], trimmed = int(p.lengths.max()), trimmed + p.trimmed
                    bar.update(1)
    finally:
        model.train(was_training)
    settings = {"model": model.name or type(model).__name__, "arch": model.cfg.arch,
                "mode": mode, "unit": "bytes" if mode == "bytes" else "tokens", "surprisal": UNITS,
                "n_trials": n_trials, "seed": int(seed), "n_boot": n_boot, "ci": float(ci),
                "bootstrap": "percentile, trials resampled, median", "exclude_first": True,
                "n_ctx": model.cfg.n_ctx, "context_limit": model.context_limit, "overflow": overflow, "trimmed_rows": trimmed}
    return MemoryResult(settings=settings, conditions=conditions, set_sizes=set_sizes,
                        intervening=intervening, x1=x[0], x2=x[1], median=stats[0], ci_low=stats[1],
                        ci_high=stats[2], n=stats[3].long(), seq_len=seq_len)
