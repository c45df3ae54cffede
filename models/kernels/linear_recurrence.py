"""Elementwise (diagonal) linear recurrence ``h_t = a_t ⊙ h_{t−1} + b_t``.

The recurrence behind minGRU / minLSTM (Feng et al. 2024) and HGRN (Qin et al. 2023): decays
``a`` and writes ``b`` that depend on the input only, never on ``h_{t−1}``. Three backends share
one signature (``a, b [B, L, D]``, ``h0 [B, D]`` or None = zeros):

* :func:`linear_recurrence_ref` -- the plain twin: a Python loop over time. The specification.
* :func:`linear_recurrence_loop` -- the same loop without an autograd graph per step: a custom
  autograd function whose backward is the reverse-time loop (``gh_t = gy_t + a_{t+1} gh_{t+1}``,
  ``ga_t = gh_t h_{t−1}``, ``gb_t = gh_t``). The CPU default: on 2 CPU threads it is 10-30×
  faster in forward than the log-space scan (whose float64 ``logcumsumexp`` dominates) and its
  backward does not keep L graph nodes (``seqlens bench kernels --device cpu``).
* :func:`linear_recurrence_chunked` -- Heinsen's log-space parallel scan (Heinsen 2023,
  "Efficient Parallelization of a Ubiquitous Sequential Computation"), :func:`mingru_scan`, in
  chunks of :data:`SCAN_CHUNK` positions (minGRU's paper form). It needs decays ``a ≥ 0``.
* ``"triton"`` -- one program per (batch row, block of channels) walking the sequence, with a
  hand-written backward (``linear_recurrence_triton.py``, imported only when selected, because
  ``triton.jit`` fixes interpreter-vs-compiler when a kernel is defined). Any real ``a``.

:func:`linear_recurrence` dispatches (``backend="auto"``: Triton for CUDA tensors, the loop
otherwise; see :func:`seqlens.models.kernels.dispatch.resolve_backend`) and returns a
:class:`RecurrenceOutput`. All backends are differentiable in ``a``, ``b`` and ``h0``.

Dtypes: the recurrence runs and ``h`` is returned in float32 for float16 / bfloat16 / float32
inputs, in float64 when any input is float64 (:func:`compute_dtype`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .dispatch import resolve_backend
from seqlens.validate import positive_int

from .common import TapPositions
from .common import check_shape as _check_shape
from .common import validate_tap_positions as _validate_tap_positions

__all__ = [
    "SCAN_CHUNK",
    "RecurrenceOutput",
    "compute_dtype",
    "linear_recurrence",
    "linear_recurrence_chunked",
    "linear_recurrence_loop",
    "linear_recurrence_ref",
    "mingru_scan",
    "mingru_scan_ref",
]

SCAN_CHUNK = 64  # positions per log-space chunk (bounds |a*|, see mingru_scan)


class RecurrenceOutput(NamedTuple):
    """Result of :func:`linear_recurrence` and its backends.

    Attributes:
        h: Every state ``h_t``, ``[B, L, D]`` in :func:`compute_dtype`.
        final_state: ``h_{L−1}`` (``h0``, or zeros, when ``L = 0``), ``[B, D]``.
        taps: ``h`` at ``tap_positions``, ``[B, T, D]``, or None when no taps were asked for.
    """

    h: Tensor
    final_state: Tensor
    taps: Tensor | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scans and states run in float32, or float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- validation


def _validate(a: Tensor, b: Tensor, h0: Tensor | None) -> torch.dtype:
    """Check ``a, b [B, L, D]`` and ``h0 [B, D]`` (real floating point, one device); return the
    output dtype (float64 if any input is float64, else float32)."""
    if a.dim() != 3:
        raise ValueError(f"a: expected shape [batch, seq_len, dim], got {list(a.shape)}")
    batch, _, dim = a.shape
    _check_shape("b", b, ("batch", "seq_len", "dim"), tuple(a.shape))
    if h0 is not None:
        _check_shape("h0", h0, ("batch", "dim"), (batch, dim))
    for name, t in (("a", a), ("b", b), ("h0", h0)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a real floating point tensor, got dtype {t.dtype}")
        if t.device != a.device:
            raise ValueError(f"{name}: expected a tensor on {a.device} (the device of a), got {t.device}")
    wide = any(t is not None and t.dtype == torch.float64 for t in (a, b, h0))
    return torch.float64 if wide else torch.float32


def _package(h: Tensor, h0: Tensor | None, taps_at: list[int] | None) -> RecurrenceOutput:
    """Build the :class:`RecurrenceOutput` from all states ``h [B, L, D]``: the final state is
    the last row (``h0`` or zeros for an empty sequence) and taps are gathered from ``h``."""
    if h.shape[1] > 0:
        final = h[:, -1]
    elif h0 is not None:
        final = h0.to(h.dtype)
    else:
        final = h.new_zeros(h.shape[0], h.shape[2])
    taps = None if taps_at is None else h[:, taps_at]
    return RecurrenceOutput(h, final, taps)


# ----------------------------------------------------------------------------- reference


def mingru_scan_ref(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain sequential twin of :func:`mingru_scan`: ``h_t = a_t ⊙ h_{t−1} + b_t`` for
    ``a, b [B, L, D]`` from ``h_{−1} = h0 [B, D]`` (zeros if None). Returns ``h [B, L, D]`` in
    :func:`compute_dtype`. Obviously correct and slow: the specification the scan must equal."""
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    h = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0.to(dtype)
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1) if out else a.new_zeros(a.shape)


def linear_recurrence_ref(
    a: Tensor, b: Tensor, h0: Tensor | None = None, tap_positions: TapPositions | None = None
) -> RecurrenceOutput:
    """Reference ``h_t = a_t ⊙ h_{t−1} + b_t``, one Python step per position (any real ``a``).

    Args:
        a: Decays ``[B, L, D]``.
        b: Writes ``[B, L, D]``.
        h0: State before position 0, ``[B, D]``; zeros when None.
        tap_positions: Sorted unique positions in ``[0, L)`` whose states are returned as taps.

    Returns:
        :class:`RecurrenceOutput` ``(h [B, L, D], final_state [B, D], taps [B, T, D] | None)``,
        in float32 (float64 if any input is float64); differentiable by ordinary autograd.
    """
    dtype = _validate(a, b, h0)
    taps_at = _validate_tap_positions(tap_positions, a.shape[1])
    h = mingru_scan_ref(a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype))
    return _package(h, h0, taps_at)


# ----------------------------------------------------------------------------- loop with a reverse-time backward


class _LoopFn(torch.autograd.Function):
    """``h = loop(a, b, h0)`` with a hand-written backward (no per-step graph nodes)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:  # type: ignore[override]
        h = torch.empty_like(b)
        prev = h0 if h0 is not None else b.new_zeros(b.shape[0], b.shape[2])
        for t in range(b.shape[1]):
            prev = torch.addcmul(b[:, t], a[:, t], prev)
            h[:, t] = prev
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        ga, gb = torch.empty_like(a), torch.empty_like(h)
        g = torch.zeros_like(h[:, 0])
        for t in reversed(range(h.shape[1])):
            g = g + gy[:, t]  # dLoss/dh_t: its own output plus what flowed back from t + 1
            gb[:, t] = g
            prev = h[:, t - 1] if t > 0 else h0
            if prev is None:
                ga[:, t] = 0.0
            else:
                torch.mul(g, prev, out=ga[:, t])
            g = g * a[:, t]
        return ga, gb, (g if h0 is not None else None)


def linear_recurrence_loop(
    a: Tensor, b: Tensor, h0: Tensor | None = None, tap_positions: TapPositions | None = None
) -> RecurrenceOutput:
    """The reference's loop with a reverse-time backward (:class:`_LoopFn`); equals
    :func:`linear_recurrence_ref` (the same loop; ``addcmul`` may fuse the multiply-add) for any
    real ``a``. Shapes and
    return as :func:`linear_recurrence_ref`."""
    dtype = _validate(a, b, h0)
    taps_at = _validate_tap_positions(tap_positions, a.shape[1])
    a, b = a.to(dtype), b.to(dtype)
    h = _LoopFn.apply(a, b, None if h0 is None else h0.to(dtype))
    return _package(h, h0, taps_at)


# ----------------------------------------------------------------------------- log-space scan


def _log_floor(dtype: torch.dtype) -> float:
    """``log(eps²)``: coefficients below ``eps²`` are numerically zero next to the O(1) terms
    they are added to. Flooring keeps ``log 0 = −∞`` out of the scan (it would give ``∞ − ∞``
    in forward and NaN gradients in backward)."""
    return 2.0 * math.log(torch.finfo(dtype).eps)


def _safe_log(x: Tensor) -> Tensor:
    """``log(max(x, eps²))``: finite values and finite gradients, also at x = 0."""
    return x.clamp_min(math.exp(_log_floor(x.dtype))).log()


def _log_scan_chunk(log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
    """Heinsen's scan on one chunk: ``h_t = exp(a*_t + logcumsumexp_{s≤t}(log b_s − a*_s))
    + exp(a*_t) h0`` with ``a*_t = Σ_{k≤t} log a_k``. The initial state enters linearly (it is
    the ``s = −1`` term with ``b_{−1} = h0``) rather than as a prepended ``log h0``, so a zero or,
    after a hook edit, negative ``h0`` needs no logarithm."""
    a_star = log_a.cumsum(1)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
    if h0 is not None:
        h = h + torch.exp(a_star) * h0[:, None]
    return h


def _log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None, chunk_size: int) -> Tensor:
    """Chunked log-space scan: each chunk continues from the previous chunk's last ``h``."""
    out, h = [], h0
    for start in range(0, log_a.shape[1], chunk_size):
        sl = slice(start, start + chunk_size)
        hs = _log_scan_chunk(log_a[:, sl], log_b[:, sl], h)
        out.append(hs)
        h = hs[:, -1]
    return torch.cat(out, 1)


def mingru_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, chunk_size: int = SCAN_CHUNK) -> Tensor:
    """``h_t = a_t ⊙ h_{t−1} + b_t`` in parallel (log space); must equal
    :func:`mingru_scan_ref` (same signature and return).

    ``a [B, L, D] ≥ 0`` (decays), ``b [B, L, D]`` (writes), ``h0 [B, D]`` or None; returns
    ``h [B, L, D]`` in :func:`compute_dtype`.

    Precision: ``log h_t = a*_t + lcse(log b − a*)`` cancels two terms of size ``|a*|``, which
    grows by ``|log a_k|`` per step (up to ``−log eps² ≈ 32`` for a saturated fp32 gate), and
    float32 would lose ``6e-8 · |a*|`` relative accuracy (1e-5 after ten saturated steps). So the
    log-space arithmetic runs in float64 (float32 only on MPS, which lacks float64), split into
    ``chunk_size`` pieces that bound ``|a*|``; the result is exact to the output's rounding.

    ``b`` is positive for minGRU / minLSTM (``h̃ > 0``); negative entries, possible only after a
    hook edit, are handled exactly as two scans since ``h`` is linear in ``b``.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"a, b: expected equal shapes [batch, seq_len, dim], got {list(a.shape)} "
                         f"and {list(b.shape)}")
    if bool((a < 0).any()):
        raise ValueError("a: the log-space scan needs decays a ≥ 0 (gate values in [0, 1]); got a "
                         "negative value (an edited hook_decay outside [0, 1]?)")
    out_dtype = compute_dtype(a.dtype)
    if a.shape[1] == 0:
        return a.new_zeros(a.shape, dtype=out_dtype)
    work = torch.float32 if a.device.type == "mps" else torch.float64
    a, b = a.to(work), b.to(work)
    h0 = None if h0 is None else h0.to(work)
    log_a = _safe_log(a)
    if not bool((b < 0).any()):
        h = _log_scan(log_a, _safe_log(b), h0, chunk_size)
    else:
        h = _log_scan(log_a, _safe_log(b.clamp_min(0)), h0, chunk_size)
        h = h - _log_scan(log_a, _safe_log((-b).clamp_min(0)), None, chunk_size)
    return h.to(out_dtype)


def linear_recurrence_chunked(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    tap_positions: TapPositions | None = None,
    chunk_size: int = SCAN_CHUNK,
) -> RecurrenceOutput:
    """The log-space parallel scan (:func:`mingru_scan`) behind the common signature; equals
    :func:`linear_recurrence_ref` for decays ``a ≥ 0`` (raises ``ValueError`` naming ``a``
    otherwise). Shapes and return as :func:`linear_recurrence_ref`; ``chunk_size`` positions
    per log-space chunk."""
    dtype = _validate(a, b, h0)
    taps_at = _validate_tap_positions(tap_positions, a.shape[1])
    positive_int("chunk_size", chunk_size)
    h = mingru_scan(a, b, h0, chunk_size).to(dtype)
    return _package(h, h0, taps_at)


# ----------------------------------------------------------------------------- dispatch


def linear_recurrence(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    tap_positions: TapPositions | None = None,
    backend: str = "auto",
) -> RecurrenceOutput:
    """``h_t = a_t ⊙ h_{t−1} + b_t`` for ``a, b [B, L, D]`` from ``h0 [B, D]`` (zeros if None).

    Args:
        a, b, h0, tap_positions: As for :func:`linear_recurrence_ref` (inputs may be strided).
        backend: ``"auto"`` (Triton on CUDA, else ``"loop"``), ``"triton"``, ``"loop"``,
            ``"chunked"`` (log-space scan, needs ``a ≥ 0``) or ``"ref"``; see
            :func:`~seqlens.models.kernels.dispatch.resolve_backend`.

    Returns:
        :class:`RecurrenceOutput` ``(h [B, L, D], final_state [B, D], taps [B, T, D] | None)``
        in float32 (float64 for float64 inputs), differentiable in ``a``, ``b`` and ``h0``.
    """
    chosen = resolve_backend("linear_recurrence", backend, a)
    if chosen == "ref":
        return linear_recurrence_ref(a, b, h0, tap_positions)
    if chosen == "chunked":
        return linear_recurrence_chunked(a, b, h0, tap_positions)
    if chosen == "loop":
        return linear_recurrence_loop(a, b, h0, tap_positions)
    dtype = _validate(a, b, h0)
    taps_at = _validate_tap_positions(tap_positions, a.shape[1])
    from .linear_recurrence_triton import linear_recurrence_triton  # lazy: see the module docstring

    return _package(linear_recurrence_triton(a, b, h0, out_dtype=dtype), h0, taps_at)
