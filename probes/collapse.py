"""State collapse: diagnosis and mitigations (Stuffed Mamba, Chen et al. 2024; docs/methods.md §5).

Diagnosis (:func:`state_collapse`)
----------------------------------
A long input (``"newlines"``, ``"repeat"``, the model's own ``"task"`` stream, or your tokens) runs
through ``SeqModel.stream`` in chunks of ``chunk`` tokens (128, as in ``thunlp/stuffed-mamba``'s
``analyze_states.py``), carrying the state, with ``return_logits=False``: memory is O(state) plus
one chunk, whatever the length. One chunk boundary is moved onto the training length ``L`` so
that a snapshot exists exactly there. After every chunk, per layer and per head:

- the carried state's ``mean, var, rms, median, min, max`` (variance with ``correction=0``;
  ``rms = sqrt(mean(h²))``), pooled over the head's elements and the batch rows;
- ``cos``: cosine similarity of each row's head state with the previous snapshot's (mean over
  rows; NaN at the first snapshot);
- the decay applied during the chunk, read from the hooks (after any edit other hooks make):
  ``decay_mean, decay_var, decay_min, decay_max`` over the chunk's tokens and the head's channels;
- the next-token loss (nats) and greedy accuracy, summed per chunk and per position bucket
  ``[0, L), [L, 2L), [2L, 4L), ...`` over the scored (row, position) pairs: every position
  (the last chunk row's logits are carried to the next chunk, so all but the very last position
  have a target), except on the ``"task"`` stream of a recipe trained on its task's
  ``loss_mask`` (``train_on="mask"``, e.g. the passkey organisms, which never learned to predict
  the filler), where only the masked positions count — the task's own metric.

Heads and the "state" per architecture (``H`` = ``model.n_groups``; each mixer's ``state_spec``,
``decay`` and ``forget_hooks`` implement this table, see seqlens.models.mixer):

============  ============================  =================================  ===================
arch          state (head view)             decay (hook)                       heads
============  ============================  =================================  ===================
mamba         ``ssm [B, D, N]``             ``exp(Δ A)`` (``hook_delta``)      H groups of d_inner
gla / retnet  ``S [B, H, d_k, d_v]``        ``g = exp(log g)`` (hook_log_decay) the mixer's heads
mingru        ``h [B, D_h]``                ``1 − z`` (``hook_decay``)         H groups of D_h
minlstm       ``h [B, D_h]``                ``f'`` (``hook_decay``)            H groups of D_h
lstm          cell ``c [B, D_h]``           ``f`` (``hook_decay``)             H groups of D_h
transformer   new KV entries of the chunk   none (NaN)                         query heads
fox           new KV entries of the chunk   forget gate ``f`` (hook_log_decay)  query heads
============  ============================  =================================  ===================

Attention has no fixed-size state: its "state" statistics are those of the keys and values the
chunk wrote into the cache (``[k; v]`` per query head), ``cos`` is NaN, and memory grows with
the cache (O(L)); models with learned positions cannot run past ``n_ctx`` (ValueError).

Collapse rule (recorded in ``settings["rule"]``)
------------------------------------------------
``collapsed`` iff both hold:

1. loss: ``max_k ℓ(bucket_k) > ℓ_in + loss_margin`` over the buckets beyond ``L`` that span at
   least ``L/2`` positions (a short last bucket is too noisy to judge), where ``ℓ_in`` is the mean loss over positions ``[0, L)`` — the regime
   the model was trained on; ``loss_margin = 0.5`` nats by default;
2. state: some (layer, head) has ``max_{t > L} rms_t > rms_ratio · rms_L`` (``rms_L``: the
   snapshot at position ``L``, floored at 1e-3 × the layer's largest head RMS so silent heads do
   not divide by ~0); ``rms_ratio = 2`` by default.

Non-finite losses or states count as exceeding. ``collapsed`` is None when the stream does not
go past ``L``. Why these thresholds: a model that extrapolates gracefully changes its per-token
loss by well under 0.1-0.2 nats past its training length (more context usually lowers it), while
the collapse Stuffed Mamba reports raises it by several nats; 0.5 nats (perplexity × 1.65) is
clearly broken yet far below a real collapse. A state whose RMS doubles past ``L`` is in a
regime training never produced (Stuffed Mamba: a few channels explode); growth alone is not
collapse (slow channels of a healthy model keep filling up), hence the AND with the loss.
``onset`` (only when collapsed) is the first snapshot past ``L`` whose chunk loss and largest RMS
ratio both exceed (one chunk's loss is noisy: on real text single chunks can exceed on their own).

Mitigations: :mod:`seqlens.probes.collapse_mitigations` (``normalize_states``, ``forget_more``,
``state_window``); token sources: :mod:`seqlens.probes.collapse_sources`; the Results:
:mod:`seqlens.probes.collapse_result`. Every public name is re-exported here.
"""

from __future__ import annotations

import math
import time
from array import array
from functools import partial
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.probes.collapse_mitigations import (_ACTIVE, _check_model, _decay_hooks, _decay_tensor, _fixed_state,
                                                 _last_values, _mixer, forget_more, head_view, n_state_heads,
                                                 normalize_states, reference_norms, state_window)
from seqlens.probes.collapse_result import (DECAY_NAMES, DEFAULT_CHUNK, DEFAULT_TOKENS, LOSS_MARGIN, RMS_RATIO, RULE,
                                            SOURCES, STAT_NAMES, CollapseComparison, CollapseResult, compare)  # noqa: F401 - re-exported
from seqlens.probes.collapse_sources import _positive_float, _positive_int, _token_chunks, train_length
from seqlens.probes.collapse_result import NEWLINE_ID, REFERENCE_ROWS, REPEAT_PERIOD, REPEAT_TEXT  # noqa: F401
from seqlens.probes.collapse_mitigations import LOG_FLOOR  # noqa: F401 - re-exported

# ----------------------------------------------------------------------------- statistics


def _moments(x: Tensor, dims: tuple[int, ...], head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var, mean of squares)`` over ``dims`` (two passes: no cancellation in the variance;
    plain sums are ~10× faster than ``torch.var_mean`` on CPU)."""
    n = x.numel() // x.shape[head_dim]
    mean = x.sum(dims) / n
    shape = [1] * x.dim()
    shape[head_dim] = -1
    var = (x - mean.view(shape)).pow(2).sum(dims) / n
    return mean, var, var + mean * mean


def state_stats(view: Tensor) -> Tensor:
    """``[B, H, G] -> [H, 6]``: ``mean, var, rms, median, min, max`` per head, pooled over the batch
    rows and the head's elements (variance with ``correction=0``)."""
    x = view.float()
    mean, var, sq = _moments(x, (0, 2), 1)
    med = x.transpose(0, 1).reshape(x.shape[1], -1).median(dim=1).values
    return torch.stack([mean, var, sq.sqrt(), med, x.amin((0, 2)), x.amax((0, 2))], 1)


def decay_stats(decay: Tensor) -> Tensor:
    """``[B, T, H, G] -> [H, 4]``: ``mean, var, min, max`` per head over batch, tokens and the
    head's decay elements."""
    d = decay.float()
    mean, var, _ = _moments(d, (0, 1, 3), 2)
    return torch.stack([mean, var, d.amin((0, 1, 3)), d.amax((0, 1, 3))], 1)


class _Tracker:
    """Aggregates one stream: per-chunk statistics as Python floats (O(n_chunks) small numbers),
    loss sums per chunk and per bucket; holds only the previous head states (O(state))."""

    def __init__(self, model, heads: int, train_len: int, bar):
        self.model, self.heads, self.L, self.bar = model, heads, train_len, bar
        self.fixed = _fixed_state(model)
        self.positions: list[int] = []
        # per-chunk summaries as packed float32 (4 bytes a number, no per-object overhead)
        self.state, self.cos, self.decay = array("f"), array("f"), array("f")
        self.loss_sum: list[float] = []
        self.loss_cnt: list[int] = []
        self.bucket_sum: dict[int, float] = {}
        self.bucket_cnt: dict[int, int] = {}
        self.bucket_hit: dict[int, int] = {}
        self.prev: list[Tensor | None] = [None] * model.cfg.n_layers
        self.last_logits: Tensor | None = None
        self.last_mask: Tensor | None = None
        self.chunk: Tensor | None = None
        self.mask: Tensor | None = None

    def bucket(self, pos: Tensor) -> Tensor:
        """Bucket 0 = [0, L); k ≥ 1 = [L·2^(k−1), L·2^k)."""
        ratio = pos.double() / self.L
        return torch.where(ratio < 1, 0, torch.floor(torch.log2(ratio.clamp_min(1))).long() + 1)

    def add_loss(self, chunk_index: int, pos: Tensor, logits: Tensor, targets: Tensor,
                 mask: Tensor | None) -> None:
        """Score ``logits [B, n, V]`` at absolute positions ``pos [n]`` against ``targets [B, n]``
        where ``mask [B, n]`` (None: everywhere): loss sums, counts and hits per chunk and bucket."""
        if targets.shape[1] == 0:
            return
        B, n, V = logits.shape
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), reduction="none").view(B, n)
        hit = logits.argmax(-1) == targets
        keep = torch.ones_like(hit) if mask is None else mask.to(hit.device)
        loss, hit, keep = loss.double().cpu(), hit.cpu(), keep.cpu()
        self.loss_sum[chunk_index] += float(loss[keep].sum())
        self.loss_cnt[chunk_index] += int(keep.sum())
        b = self.bucket(pos)[None].expand(B, n)
        for k in torch.unique(b[keep]).tolist():
            sel = keep & (b == k)
            self.bucket_sum[k] = self.bucket_sum.get(k, 0.0) + float(loss[sel].sum())
            self.bucket_cnt[k] = self.bucket_cnt.get(k, 0) + int(sel.sum())
            self.bucket_hit[k] = self.bucket_hit.get(k, 0) + int(hit[sel].sum())

    def losses(self, start: int, logits: Tensor, tokens: Tensor, mask: Tensor | None) -> None:
        c = len(self.positions)
        self.loss_sum.append(0.0)
        self.loss_cnt.append(0)
        T = tokens.shape[1]
        if self.last_logits is not None:  # the previous chunk's last row predicts this chunk's first token
            self.add_loss(c - 1, torch.tensor([start - 1]), self.last_logits[:, None], tokens[:, :1],
                          self.last_mask)
        self.add_loss(c, torch.arange(start, start + T - 1), logits[:, :-1], tokens[:, 1:],
                      None if mask is None else mask[:, :-1])
        self.last_logits = logits[:, -1].detach().clone()
        self.last_mask = None if mask is None else mask[:, -1:].clone()

    def __call__(self, seen: list[dict[str, Tensor]], start: int, logits: Tensor, state) -> None:
        tokens = self.chunk
        self.losses(start, logits, tokens, self.mask)
        T = tokens.shape[1]
        nan = torch.full((self.heads,), float("nan"))
        nan_decay = torch.full((self.heads, len(DECAY_NAMES)), float("nan"))
        for l, layer_state in enumerate(state.layers):
            view = _mixer(self.model, l).state_view(layer_state, T, self.heads)
            if not self.fixed:  # a KV cache: the chunk's new entries, no previous state to compare
                cos = nan
            else:
                cos = nan if self.prev[l] is None else F.cosine_similarity(
                    view.float(), self.prev[l], dim=-1).mean(0).cpu()
                self.prev[l] = view.detach().float().clone()
            self.state.extend(state_stats(view).flatten().tolist())
            self.cos.extend(cos.tolist())
            d = _decay_tensor(self.model, l, seen[l], self.heads)
            self.decay.extend((nan_decay if d is None else decay_stats(d)).flatten().tolist())
        self.positions.append(start + T)
        if self.bar is not None:
            self.bar.update(T)


# ----------------------------------------------------------------------------- the rule


def _nan_max(x: Tensor) -> float:
    """Max with NaN counted as +inf (a non-finite value exceeds any threshold)."""
    if x.numel() == 0:
        return math.nan
    return float(torch.nan_to_num(x.double(), nan=math.inf).max())


def _verdict(r: dict[str, Any], L: int, loss_margin: float, rms_ratio: float) -> None:
    """Fill ``loss_in, loss_beyond, rms_ratio, collapsed, onset`` of the result fields ``r``."""
    edges, bl, bc = r["bucket_edges"], r["bucket_loss"], r["bucket_count"]
    r["loss_in"] = float(bl[0]) if len(bl) and edges[0] == 0 and edges[1] <= L else math.nan
    beyond = (edges[:-1] >= L) & (edges[1:] - edges[:-1] >= max(1, L // 2)) & (bc > 0)
    r["loss_beyond"] = _nan_max(bl[beyond]) if bool(beyond.any()) else math.nan
    pos, rms = r["positions"], r["state"][..., STAT_NAMES.index("rms")]  # [C, L, H]
    at = (pos == L).nonzero()
    past = pos > L
    if len(at) == 0 or not bool(past.any()) or not bool(beyond.any()):
        r["rms_ratio"] = torch.full(rms.shape[1:], math.nan)
        r["collapsed"], r["onset"] = None, None
        return
    ref = rms[int(at[0])]
    ref = torch.maximum(ref, 1e-3 * ref.amax(-1, keepdim=True)).clamp_min(1e-30)
    ratio_t = torch.nan_to_num(rms[past] / ref, nan=math.inf)  # [C', L, H]
    r["rms_ratio"] = ratio_t.amax(0).float()
    loss_bad = r["loss_beyond"] > r["loss_in"] + loss_margin or not math.isfinite(r["loss_beyond"])
    r["collapsed"] = bool(loss_bad and float(r["rms_ratio"].max()) > rms_ratio)
    chunk_bad = torch.nan_to_num(r["chunk_loss"][past].double(), nan=math.inf) > r["loss_in"] + loss_margin
    both = chunk_bad & (ratio_t.flatten(1).amax(1) > rms_ratio)
    r["onset"] = int(pos[past][both][0]) if r["collapsed"] and bool(both.any()) else None


# ----------------------------------------------------------------------------- the probe


def state_collapse(model, source: Any = "newlines", n_tokens: int | None = None, chunk: int = DEFAULT_CHUNK,
                   train_len: int | None = None, batch: int | None = None, seed: int = 0,
                   progress: Any = True, loss_margin: float = LOSS_MARGIN,
                   rms_ratio: float = RMS_RATIO) -> CollapseResult:
    """Stream a long input through ``model`` carrying the state and record, per chunk, layer and
    head, the state and decay statistics, the loss per position bucket and the collapse verdict
    (definitions and rule: the module docstring).

    ``source``: ``"newlines"`` (the Stuffed Mamba prompt), ``"repeat"`` (a sentence repeated; random
    tokens for non-byte vocabularies), ``"task"`` (the model's recipe: task sequences concatenated,
    or the stdlib validation text), token ids ``[batch, length]``, or an iterable of ``[batch, T]``
    chunks (read lazily). ``n_tokens``: stream length (default 16,384 for named sources, all of the
    given tokens otherwise). ``train_len``: default from the recipe (``data_kwargs["seq_len"]``), else
    ``cfg.n_ctx``. ``batch``: rows of the named sources (default 1). Memory is O(state + chunk)
    for recurrent models (per-chunk summaries are a few floats each)."""
    _check_model(model)
    chunk = _positive_int("chunk", chunk)
    n_tokens = _positive_int("n_tokens", n_tokens, allow_none=True)
    if n_tokens is not None and n_tokens < 2:
        raise ValueError(f"n_tokens: expected at least 2 tokens (one next-token target), got {n_tokens}")
    batch = _positive_int("batch", batch, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    loss_margin, rms_ratio = _positive_float("loss_margin", loss_margin), _positive_float("rms_ratio", rms_ratio)
    L, L_from = train_length(model, train_len)
    chunks, description, scored, total = _token_chunks(model, source, n_tokens, chunk, L, batch, seed)
    if not _fixed_state(model) and model.cfg.positions == "learned" and total is not None and total > model.cfg.n_ctx:
        raise ValueError(f"n_tokens: {total} exceeds n_ctx={model.cfg.n_ctx}; learned position embeddings "
                         "cannot run past it (state collapse is not applicable)")
    heads = n_state_heads(model)
    bar = None
    if progress:  # True or a callable(done, total) (seqlens.progress); one step per streamed token
        from seqlens.progress import progress_bar
        bar = progress_bar(progress, total=total, desc="state_collapse", unit="tok")
    tracker = _Tracker(model, heads, L, bar)
    device = model.device

    def feed() -> Iterator[Tensor]:
        for c, mask in chunks:
            tracker.chunk, tracker.mask = c.to(device), mask
            yield tracker.chunk

    t0 = time.perf_counter()
    try:
        with _last_values(model, _decay_hooks(model)) as seen:
            model.stream(feed(), chunk_size=chunk, callback=partial(tracker, seen), return_logits=False)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    return _build(model, tracker, L, L_from, heads, loss_margin, rms_ratio, {
        "source": source if isinstance(source, str) else description, "source_description": description,
        "loss_positions": scored,
        "n_tokens": tracker.positions[-1], "chunk": chunk, "batch": int(tracker.chunk.shape[0]), "seed": seed,
        "elapsed_s": elapsed})


def _unpack(values: array, shape: tuple[int, ...]) -> Tensor:
    return torch.frombuffer(bytearray(values.tobytes()), dtype=torch.float32).reshape(shape)


def _build(model, t: _Tracker, L: int, L_from: str, heads: int, loss_margin: float,
           rms_ratio: float, extra: dict) -> CollapseResult:
    n = t.positions[-1]
    K = max(t.bucket_cnt) + 1 if t.bucket_cnt else 1  # buckets 0 .. K-1 hold positions
    edges = [0] + [L * 2 ** k for k in range(K - 1)] + [n]
    cnt = torch.tensor([t.bucket_cnt.get(k, 0) for k in range(len(edges) - 1)], dtype=torch.long)
    bsum = torch.tensor([t.bucket_sum.get(k, 0.0) for k in range(len(edges) - 1)], dtype=torch.float64)
    bhit = torch.tensor([t.bucket_hit.get(k, 0) for k in range(len(edges) - 1)], dtype=torch.float64)
    ccnt = torch.tensor(t.loss_cnt, dtype=torch.long)
    r: dict[str, Any] = {
        "positions": torch.tensor(t.positions, dtype=torch.long),
        "state": _unpack(t.state, (len(t.positions), -1, heads, len(STAT_NAMES))),
        "cos": _unpack(t.cos, (len(t.positions), -1, heads)),
        "decay": _unpack(t.decay, (len(t.positions), -1, heads, len(DECAY_NAMES))),
        "chunk_loss": (torch.tensor(t.loss_sum, dtype=torch.float64) / ccnt).float(),
        "chunk_count": ccnt,
        "bucket_edges": torch.tensor(edges, dtype=torch.long),
        "bucket_loss": (bsum / cnt).float(), "bucket_count": cnt, "bucket_accuracy": (bhit / cnt).float(),
        "train_len": L,
    }
    _verdict(r, L, loss_margin, rms_ratio)
    state_desc = _mixer(model).state_spec.description
    settings = {"model": getattr(model, "name", None), "arch": model.cfg.arch, **extra, "train_len": L,
                "train_len_from": L_from, "heads": heads, "state": state_desc,
                "decay_hooks": list(_decay_hooks(model)), "stats": list(STAT_NAMES), "decay_stats": list(DECAY_NAMES),
                "rule": RULE, "loss_margin": loss_margin, "rms_ratio": rms_ratio,
                "mitigations": [dict(m) for m in _ACTIVE.get(model, [])],
                "scan_backend": model.backend}
    return CollapseResult(settings=settings, **r)


__all__ = ["CollapseComparison", "CollapseResult", "DECAY_NAMES", "LOSS_MARGIN", "RMS_RATIO", "SOURCES",
           "STAT_NAMES", "compare", "decay_stats", "forget_more", "head_view", "n_state_heads",
           "normalize_states", "reference_norms", "state_collapse", "state_stats", "state_window",
           "train_length"]
