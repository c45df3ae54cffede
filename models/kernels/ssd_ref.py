"""Mamba-2's scan (see :mod:`.ssd` for the recurrence and layouts): the plain step loop
:func:`ssd_ref` (the specification) and the chunked SSD form :func:`ssd_chunked` (the CPU path).
Both return an :class:`~.common.SSDResult`; the Triton module (:mod:`.ssd_triton`) imports them
from here, and shared helpers from :mod:`.common`."""

from __future__ import annotations

import torch
from torch import Tensor

from seqlens.validate import positive_int

from .common import SSDResult, TapPositions, validate_ssd_inputs
from .common import validate_tap_positions as _validate_tap_positions
from .linear_attention import segment_decay, suffix_log_decay

__all__ = ["ssd_chunked", "ssd_ref"]


def _heads(t: Tensor, heads: int) -> Tensor:
    """``[Bt, L, G, N] -> [Bt, L, H, N]``: each group's B / C repeated for its heads."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


# ----------------------------------------------------------------------------- reference


def ssd_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
            tap_positions: TapPositions | None = None) -> SSDResult:
    """The step loop ``S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ``, ``y_t = S_t C_t`` (module
    docstring for shapes): obviously correct and slow, the specification the others must equal."""
    dtype = validate_ssd_inputs(x, dt, A, B, C, initial_state)
    taps_at = _validate_tap_positions(tap_positions, x.shape[1])
    Bt, L, H, P = x.shape
    x, dt, A = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = _heads(B.to(dtype), H), _heads(C.to(dtype), H)
    S = x.new_zeros(Bt, H, P, B.shape[-1]) if initial_state is None else initial_state.to(dtype)
    ys, states = [], []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        S = decay * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
        states.append(S)
    y = torch.stack(ys, 1) if ys else x.new_zeros(x.shape)
    taps = None if taps_at is None else torch.stack([states[p] for p in taps_at], 1)
    return SSDResult(y, S, taps)


# ----------------------------------------------------------------------------- chunked form


def _chunk(x: Tensor, dt: Tensor, log_a: Tensor, Bh: Tensor, Ch: Tensor, S: Tensor,
           taps: list[int]) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk, inputs ``[Bt, Q, H, ...]`` and ``log_a = Δ A [Bt, Q, H]``, state ``S``.

    With ``b_t = Σ_{j≤t} log a_j`` (chunk-local) and ``Λ[t, s] = exp(Σ_{j=s+1..t} log a_j)``:
    ``y_t = e^{b_t} S C_t + Σ_{s≤t} (C_t·B_s) Λ[t, s] Δ_s x_s`` and ``S' = e^{b_Q} S + Σ_s
    e^{Σ_{j>s} log a_j} Δ_s x_s B_sᵀ``. The decays are summed directly (GLA's
    :func:`segment_decay`), so every exponent is ≤ 0 and nothing cancels."""
    la = log_a.transpose(1, 2)[..., None]  # [Bt, H, Q, 1]
    b = la.cumsum(2)  # [Bt, H, Q, 1]
    lam = segment_decay(la)[..., 0]  # [Bt, H, t, s]
    xs = dt[..., None] * x  # Δ_s x_s  [Bt, Q, H, P]
    scores = torch.einsum("bthn,bshn->bhts", Ch, Bh) * lam
    y = torch.einsum("bhts,bshp->bthp", scores, xs)
    y = y + torch.einsum("bthn,bhpn->bthp", Ch, S) * b.exp().permute(0, 2, 1, 3)
    tapped = None
    if taps:
        carried = b[:, :, taps, :, None].exp() * S[:, :, None]  # [Bt, H, T, P, N]
        tapped = carried + torch.einsum("bhks,bshp,bshn->bhkpn", lam[:, :, taps], xs, Bh)
        tapped = tapped.transpose(1, 2)
    to_end = suffix_log_decay(la).exp()[..., 0]  # [Bt, H, Q]
    S = b[:, :, -1, :, None].exp() * S + torch.einsum("bhs,bshp,bshn->bhpn", to_end, xs, Bh)
    return y, S, tapped


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
                tap_positions: TapPositions | None = None, chunk_size: int = 64) -> SSDResult:
    """The chunked SSD form (:func:`_chunk`), ``chunk_size`` positions per chunk; equals
    :func:`ssd_ref` (same arguments and return) up to float rounding, differentiable by autograd.
    Working memory ``O(Bt · H · Q · (Q + P · N))`` per chunk, nothing of size ``L · P · N``."""
    dtype = validate_ssd_inputs(x, dt, A, B, C, initial_state)
    taps_at = _validate_tap_positions(tap_positions, x.shape[1])
    positive_int("chunk_size", chunk_size)
    Bt, L, H, P = x.shape
    x, dt, A = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = _heads(B.to(dtype), H), _heads(C.to(dtype), H)
    S = x.new_zeros(Bt, H, P, B.shape[-1]) if initial_state is None else initial_state.to(dtype)
    log_a = dt * A
    ys, taps = [], []
    for start in range(0, L, chunk_size):
        sl = slice(start, start + chunk_size)
        local = [p - start for p in taps_at or () if start <= p < start + chunk_size]
        y, S, tapped = _chunk(x[:, sl], dt[:, sl], log_a[:, sl], Bh[:, sl], Ch[:, sl], S, local)
        ys.append(y)
        if tapped is not None:
            taps.append(tapped)
    y = torch.cat(ys, 1) if ys else x.new_zeros(x.shape)
    tapped = None if taps_at is None else torch.cat(taps, 1)
    return SSDResult(y, S, tapped)
