"""Per-query statistics of causal softmax / forgetting attention, without the L×L matrix.

For query ``i`` of head ``(b, h)`` the attention logits ("scaled scores") over keys ``j ≤ i`` are

    s_ij = scale · q_i·k_j + (c_i − c_j),     c = cumsum(log_forget) along L

where the bracket is present only for forgetting attention (FoX, Lin et al. 2025, eq. 4; the bias
is not scaled, as in ``models/transformer.py``), and ``p_ij = softmax_j(s_ij)``. Options of real
checkpoints: ``softcap`` (Gemma 2) replaces ``scale · q_i·k_j`` by ``cap · tanh(scale · q_i·k_j / cap)``;
``window`` (Mistral, Qwen2, Gemma 2 local layers) keeps only keys with ``i − j < window``. Returned per
``[B, H, L]`` query (docs/methods.md §2, retrieval heads: the argmax key; §4, attention sinks: the mass
on the first keys):

* ``out``: ``Σ_j p_ij v_j``, the ordinary attention output ``[B, H, L, d_v]`` in q's dtype;
* ``max_prob = max_j p_ij``; ``argmax``: the key attaining it (int64; **ties go to the smallest
  key index** in every backend);
* ``entropy = −Σ_j p_ij log p_ij`` in nats (``= lse − Σ_j p_ij s_ij``);
* ``sink_mass = Σ_{j < sink_k} p_ij``; ``span_mass = Σ_{start ≤ j < end} p_ij`` (None without
  a span); ``lse = log Σ_j exp s_ij``.

Statistics are float32 (computed in float32, or float64 for float64 inputs, then rounded).

Backends (:func:`attention_stats` dispatches; ``"auto"`` = Triton on CUDA, else ``"chunked"``):

* ``"ref"`` -- :func:`attention_stats_ref`: the full ``[B, H, L, L]`` scores, ``torch.softmax``,
  plain and obvious, O(L²) memory;
* ``"chunked"`` -- :func:`attention_stats_chunked`: the same per block of query rows, statistics
  from the log-sum-exp, O(block · L) memory;
* ``"triton"`` -- a flash-attention style kernel (``attention_stats_triton.py``, imported only
  when chosen) with an online softmax over key blocks; O(L · H) memory besides inputs and ``out``.

Forward only: these are analysis statistics. Every backend runs under ``torch.no_grad()``, so the
results carry no autograd history even when the inputs require gradients (differentiate the
model's own attention for gradients).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from seqlens.validate import check_int, positive_int

from .dispatch import resolve_backend

__all__ = [
    "DEFAULT_QUERY_BLOCK",
    "AttentionStats",
    "attention_stats",
    "attention_stats_chunked",
    "attention_stats_ref",
    "pattern_stats",
]

#: query rows per block in the chunked backend (working memory ~ 4 · B · H · block · L floats)
DEFAULT_QUERY_BLOCK = 256


class AttentionStats(NamedTuple):
    """Result of :func:`attention_stats` (all statistics ``[B, H, L]`` float32 unless noted).

    Attributes:
        out: Attention output ``[B, H, L, d_v]`` in the dtype of ``q``.
        max_prob: Largest attention probability of each query.
        entropy: Entropy of each query's attention distribution, in nats.
        sink_mass: Probability on keys ``j < sink_k``.
        span_mass: Probability on keys in the span, or None when no span was given.
        argmax: Key index of ``max_prob`` (int64; smallest index on ties).
        lse: Log-sum-exp of the scaled scores (incl. the forget bias).
        backend: The backend that ran (``"triton"``, ``"chunked"`` or ``"ref"``).
    """

    out: Tensor
    max_prob: Tensor
    entropy: Tensor
    sink_mass: Tensor
    span_mass: Tensor | None
    argmax: Tensor
    lse: Tensor
    backend: str


# ----------------------------------------------------------------------------- validation


def _validate_qkv(q: Tensor, k: Tensor, v: Tensor, log_forget: Tensor | None) -> None:
    """Check ``q, k [B, H, L, d]``, ``v [B, H, L, d_v]``, ``log_forget [B, H, L]`` (finite), all
    real floating point on one device, ``L ≥ 1``."""
    if q.dim() != 4:
        raise ValueError(f"q: expected shape [batch, heads, seq_len, d], got {list(q.shape)}")
    B, H, L, d = q.shape
    if L < 1 or d < 1:
        raise ValueError(f"q: expected seq_len ≥ 1 and d ≥ 1, got shape {list(q.shape)}")
    if tuple(k.shape) != (B, H, L, d):
        raise ValueError(f"k: expected shape [batch, heads, seq_len, d] = {[B, H, L, d]}, "
                         f"got {list(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, L) or v.shape[3] < 1:
        raise ValueError(f"v: expected shape [batch, heads, seq_len, d_v] = {[B, H, L, 'd_v ≥ 1']}, "
                         f"got {list(v.shape)}")
    if log_forget is not None and tuple(log_forget.shape) != (B, H, L):
        raise ValueError(f"log_forget: expected shape [batch, heads, seq_len] = {[B, H, L]}, "
                         f"got {list(log_forget.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("log_forget", log_forget)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a real floating point tensor, got dtype {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected a tensor on {q.device} (the device of q), got {t.device}")
    if log_forget is not None and not bool(torch.isfinite(log_forget).all()):
        raise ValueError("log_forget: expected finite values (log of forget gates in (0, 1]), "
                         "got inf or nan")


def _validate_sink_k(sink_k: int) -> int:
    """``sink_k`` as a non-negative int (it may exceed L: then every key is a sink)."""
    return check_int("sink_k", sink_k, low=0)


def _validate_span(span: tuple[int, int] | Tensor | None, batch: int, seq_len: int,
                   device: torch.device) -> Tensor | None:
    """``span`` as an int64 ``[B, 2]`` tensor of half-open key ranges ``[start, end)`` with
    ``0 ≤ start ≤ end ≤ L`` (an empty range has mass 0), or None."""
    if span is None:
        return None
    if isinstance(span, Tensor):
        if span.dim() != 2 or tuple(span.shape) != (batch, 2):
            raise ValueError(f"span: expected a [batch, 2] = {[batch, 2]} tensor, "
                             f"got shape {list(span.shape)}")
        if span.is_floating_point() or span.is_complex() or span.dtype == torch.bool:
            raise ValueError(f"span: expected an integer tensor, got dtype {span.dtype}")
        rows = span.to(device=device, dtype=torch.int64)
    else:
        try:
            start, end = (int(x) for x in span)
        except (TypeError, ValueError):
            raise ValueError(f"span: expected (start, end) or a [batch, 2] tensor, got {span!r}") from None
        rows = torch.tensor([[start, end]] * batch, dtype=torch.int64, device=device)
    bounds = rows.cpu()
    bad = (bounds[:, 0] < 0) | (bounds[:, 1] < bounds[:, 0]) | (bounds[:, 1] > seq_len)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"span: expected 0 ≤ start ≤ end ≤ seq_len = {seq_len}, got "
                         f"{bounds[row].tolist()} for batch row {row}")
    return rows


def _validate_options(window: int | None, softcap: float | None) -> None:
    if window is not None:
        positive_int("window", window)
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"softcap: expected a positive finite float or None, got {softcap!r}")


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_forget: Tensor | None, sink_k: int,
             span: tuple[int, int] | Tensor | None, scale: float | None):
    """Validate every argument; return ``(c [B, H, L] | None, span [B, 2] | None, scale)`` with
    ``c = cumsum(log_forget)`` in float32 (float64 for float64 ``q``/``k``)."""
    _validate_qkv(q, k, v, log_forget)
    _validate_sink_k(sink_k)
    spans = _validate_span(span, q.shape[0], q.shape[2], q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float or None (= 1/sqrt(d)), got {scale!r}")
    c = None
    if log_forget is not None:
        c = log_forget.to(_work_dtype(q, k)).cumsum(-1)
    return c, spans, float(scale)


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ----------------------------------------------------------------------------- PyTorch backends


def _scores(q: Tensor, k: Tensor, c: Tensor | None, scale: float, rows: slice, n_keys: int,
            window: int | None = None, softcap: float | None = None) -> Tensor:
    """Masked scaled scores ``[B, H, len(rows), n_keys]`` of query ``rows`` against keys
    ``[0, n_keys)``, for ``q, k`` already in the work dtype; entries above the causal diagonal
    (and outside a sliding ``window``) are −inf; ``softcap``: Gemma 2's ``cap · tanh(s / cap)``."""
    s = scale * (q[:, :, rows] @ k[:, :, :n_keys].transpose(-1, -2))
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if c is not None:
        s = s + (c[:, :, rows, None] - c[:, :, None, :n_keys])
    qi = torch.arange(q.shape[2], device=q.device)[rows, None]
    kj = torch.arange(n_keys, device=q.device)[None, :]
    allowed = kj <= qi
    if window is not None:
        allowed = allowed & (qi - kj < window)
    return s.masked_fill(~allowed, float("-inf"))


def _key_masses(p: Tensor, sink_k: int, spans: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Sink and span masses ``[B, H, T]`` of probabilities ``p [B, H, T, S]`` (keys 0..S−1)."""
    sink = p[..., :sink_k].sum(-1)
    if spans is None:
        return sink, None
    j = torch.arange(p.shape[-1], device=p.device)
    inside = (j >= spans[:, :1]) & (j < spans[:, 1:])  # [B, S]
    return sink, (p * inside[:, None, None, :]).sum(-1)


def _finish(out: Tensor, q: Tensor, stats: dict[str, Tensor | None], backend: str) -> AttentionStats:
    """Cast ``out`` to q's dtype and the float statistics to float32."""
    f32 = {name: None if t is None or name == "argmax" else t.float() for name, t in stats.items()}
    return AttentionStats(out.to(q.dtype), f32["max_prob"], f32["entropy"], f32["sink_mass"],
                          f32["span_mass"], stats["argmax"], f32["lse"], backend)


@torch.no_grad()
def attention_stats_ref(q: Tensor, k: Tensor, v: Tensor, log_forget: Tensor | None = None,
                        sink_k: int = 4, span: tuple[int, int] | Tensor | None = None,
                        scale: float | None = None, window: int | None = None,
                        softcap: float | None = None) -> AttentionStats:
    """Reference: the full scores ``[B, H, L, L]`` and ``p = torch.softmax``; every statistic read
    off ``p`` directly (``entropy = −Σ xlogy(p, p)``, ``max_prob = max p``) and ``argmax`` off
    the scores (first index on ties). Arguments and return as :func:`attention_stats`; O(L²)
    memory."""
    c, spans, scale = _prepare(q, k, v, log_forget, sink_k, span, scale)
    _validate_options(window, softcap)
    dtype = _work_dtype(q, k)
    s = _scores(q.to(dtype), k.to(dtype), c, scale, slice(None), q.shape[2], window, softcap)
    p = torch.softmax(s, dim=-1)
    sink, span_mass = _key_masses(p, sink_k, spans)
    # argmax of the scores (= of p, but immune to two close scores rounding to one p);
    # torch.argmax returns the first maximal index
    stats = {"max_prob": p.amax(-1), "entropy": -torch.special.xlogy(p, p).sum(-1), "sink_mass": sink,
             "span_mass": span_mass, "argmax": s.argmax(-1), "lse": torch.logsumexp(s, -1)}
    return _finish(p @ v.to(dtype), q, stats, "ref")


def _block_stats(s: Tensor, v: Tensor, sink_k: int, spans: Tensor | None):
    """Output ``[B, H, T, d_v]`` and statistics of one block of masked scores ``s [B, H, T, S]``
    against values ``v [B, H, ≥ S, d_v]`` (the first S are used), from the log-sum-exp:
    ``p = exp(s − lse)``, ``max_prob = exp(max s − lse)``, ``entropy = Σ p (lse − s)``."""
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    top, argmax = s.amax(-1), s.argmax(-1)  # argmax: the first maximal index
    surprise = (lse[..., None] - s).masked_fill(p == 0, 0.0)  # masked keys: 0 · ∞ -> 0
    sink, span_mass = _key_masses(p, sink_k, spans)
    stats = {"max_prob": torch.exp(top - lse), "entropy": (p * surprise).sum(-1), "sink_mass": sink,
             "span_mass": span_mass, "argmax": argmax, "lse": lse}
    return p @ v[:, :, : s.shape[-1]], stats


@torch.no_grad()
def attention_stats_chunked(q: Tensor, k: Tensor, v: Tensor, log_forget: Tensor | None = None,
                            sink_k: int = 4, span: tuple[int, int] | Tensor | None = None,
                            scale: float | None = None, query_block: int | None = None,
                            window: int | None = None, softcap: float | None = None) -> AttentionStats:
    """Blocks of ``query_block`` query rows (None: :data:`DEFAULT_QUERY_BLOCK`) against their
    causal prefix of keys, statistics from the log-sum-exp (:func:`_block_stats`); equals
    :func:`attention_stats_ref` with O(block · L) working memory. Arguments and return as
    :func:`attention_stats`."""
    query_block = DEFAULT_QUERY_BLOCK if query_block is None else query_block
    positive_int("query_block", query_block)
    c, spans, scale = _prepare(q, k, v, log_forget, sink_k, span, scale)
    _validate_options(window, softcap)
    L, dtype = q.shape[2], _work_dtype(q, k)
    qw, kw, vw = q.to(dtype), k.to(dtype), v.to(dtype)
    outs, parts = [], []
    for start in range(0, L, query_block):
        stop = min(start + query_block, L)
        s = _scores(qw, kw, c, scale, slice(start, stop), stop, window, softcap)
        out, stats = _block_stats(s, vw, sink_k, spans)
        outs.append(out.to(q.dtype))
        parts.append(stats)
    stats = {name: None if parts[0][name] is None else torch.cat([p[name] for p in parts], -1)
             for name in parts[0]}
    return _finish(torch.cat(outs, 2), q, stats, "chunked")


@torch.no_grad()
def pattern_stats(pattern: Tensor, scores: Tensor, v: Tensor, sink_k: int = 4,
                  span: tuple[int, int] | Tensor | None = None) -> AttentionStats:
    """Statistics of an explicit pattern ``[B, H, L, L]`` (rows are distributions) with its
    scores ``[B, H, L, L]`` (−inf above the diagonal) and values ``v [B, H, L, d_v]``: what a
    model's hooked path uses when a hook edits the scores or the pattern, so the edit counts.
    ``argmax`` and ``max_prob`` are read off the pattern, ``lse`` off the scores; backend
    ``"explicit"``."""
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2] or scores.shape != pattern.shape:
        raise ValueError(f"pattern, scores: expected equal shapes [B, H, L, L], got {list(pattern.shape)} "
                         f"and {list(scores.shape)}")
    if tuple(v.shape[:3]) != tuple(pattern.shape[:3]):
        raise ValueError(f"v: expected shape [B, H, L, d_v] with [B, H, L] = {list(pattern.shape[:3])}, "
                         f"got {list(v.shape)}")
    spans = _validate_span(span, pattern.shape[0], pattern.shape[2], pattern.device)
    p = pattern.to(_work_dtype(pattern, v))
    sink, span_mass = _key_masses(p, _validate_sink_k(sink_k), spans)
    stats = {"max_prob": p.amax(-1), "entropy": -torch.special.xlogy(p, p).sum(-1), "sink_mass": sink,
             "span_mass": span_mass, "argmax": p.argmax(-1), "lse": torch.logsumexp(scores.float(), -1)}
    return _finish(p @ v.to(p.dtype), v, stats, "explicit")


# ----------------------------------------------------------------------------- dispatch


def attention_stats(q: Tensor, k: Tensor, v: Tensor, log_forget: Tensor | None = None,
                    sink_k: int = 4, span: tuple[int, int] | Tensor | None = None,
                    scale: float | None = None, backend: str = "auto", window: int | None = None,
                    softcap: float | None = None) -> AttentionStats:
    """Causal attention output and per-query statistics (see the module docstring).

    Args:
        q, k: Queries and keys ``[B, H, L, d]`` (any float dtype and strides).
        v: Values ``[B, H, L, d_v]``.
        log_forget: FoX log forget gates ``[B, H, L]`` (finite); the logit of query i and key j
            gets ``c_i − c_j`` with ``c = cumsum(log_forget)``. None: plain softmax attention.
        sink_k: Keys ``j < sink_k`` count as sinks (``≥ 0``; StreamingLLM keeps 4).
        span: Half-open key range ``(start, end)`` for every batch row, or an integer tensor
            ``[B, 2]`` with one range per row; ``0 ≤ start ≤ end ≤ L``. None: no ``span_mass``.
        scale: Score scale; None means ``1/sqrt(d)``.
        backend: ``"auto"``, ``"triton"``, ``"chunked"`` or ``"ref"``.
        window: Sliding window: query i reads keys ``i − window < j ≤ i``. None: every earlier key.
        softcap: Logit soft-cap ``cap · tanh(s / cap)`` of the scaled ``q·k`` (before the forget bias).

    Returns:
        :class:`AttentionStats`; statistics are ``[B, H, L]`` float32 (argmax int64), computed
        without autograd.
    """
    chosen = resolve_backend("attention_stats", backend, q)
    if chosen == "ref":
        return attention_stats_ref(q, k, v, log_forget, sink_k, span, scale, window, softcap)
    if chosen == "chunked":
        return attention_stats_chunked(q, k, v, log_forget, sink_k, span, scale, window=window, softcap=softcap)
    c, spans, scale = _prepare(q, k, v, log_forget, sink_k, span, scale)
    _validate_options(window, softcap)
    from .attention_stats_triton import attention_stats_triton  # lazy: triton.jit binds at definition

    with torch.no_grad():
        out, stats = attention_stats_triton(q, k, v, c, sink_k, spans, scale, window=window, softcap=softcap)
    return _finish(out, q, stats, "triton")
