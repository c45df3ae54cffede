"""Mamba-2's state-space-dual scan (SSD; Dao & Gu 2024, "Transformers are SSMs"), with three
backends behind one dispatcher, :func:`ssd_scan`.

Per head ``h`` (scalar decay ``A_h < 0``) and state ``S_t ∈ R^{P × N}``::

    S_t = exp(Δ_t A_h) S_{t-1} + (Δ_t x_t) B_tᵀ          x_t ∈ R^P,  B_t, C_t ∈ R^N
    y_t = S_t C_t

B and C are shared by the ``H / G`` heads of each of ``G`` groups (transformers' ``n_groups``).
The ``D`` skip and the gate lie outside (in the mixer).

* :func:`ssd_ref` (``"ref"``): the plain step loop, the specification.
* :func:`ssd_chunked` (``"chunked"``): the chunked SSD form (paper §6; transformers'
  ``torch_forward``): inside a chunk of ``Q`` positions an attention-like matrix
  ``(C_t·B_s) exp(Σ_{k=s+1..t} Δ_k A)`` applied to ``Δ_s x_s``, across chunks the state.
* ``"triton"``: :mod:`.ssd_triton` (imported only when chosen; see :mod:`.dispatch`).

Layout: ``x [Bt, L, H, P]``, ``dt [Bt, L, H]`` (Δ after softplus), ``A [H]``, ``B, C [Bt, L,
G, N]``, states ``[Bt, H, P, N]`` (transformers' layout). Arithmetic in float32 (float64 for
float64 inputs); every backend returns an :class:`SSDResult`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqlens.validate import positive_int

from .common import TapPositions, check_shape, compute_dtype
from .common import validate_tap_positions as _validate_tap_positions
from .dispatch import resolve_backend
from .linear_attention import segment_decay, suffix_log_decay

__all__ = ["SSDResult", "ssd_chunked", "ssd_ref", "ssd_scan", "validate_ssd_inputs"]


class SSDResult(NamedTuple):
    """``y [Bt, L, H, P]`` (without the D skip), ``final_state [Bt, H, P, N]`` and ``taps [Bt,
    T, H, P, N]`` (states right after the tapped positions; None when none were asked for)."""

    y: Tensor
    final_state: Tensor
    taps: Tensor | None


def validate_ssd_inputs(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        initial_state: Tensor | None) -> torch.dtype:
    """Check shapes (named in the errors) and dtypes; return the compute dtype."""
    if x.dim() != 4:
        raise ValueError(f"x: expected shape [batch, seq_len, heads, head_dim], got {list(x.shape)}")
    Bt, L, H, P = x.shape
    if B.dim() != 4:
        raise ValueError(f"B: expected shape [batch, seq_len, groups, d_state], got {list(B.shape)}")
    G, N = B.shape[2], B.shape[3]
    check_shape("dt", dt, ("batch", "seq_len", "heads"), (Bt, L, H))
    check_shape("A", A, ("heads",), (H,))
    check_shape("B", B, ("batch", "seq_len", "groups", "d_state"), (Bt, L, G, N))
    check_shape("C", C, ("batch", "seq_len", "groups", "d_state"), (Bt, L, G, N))
    if G == 0 or H % G:
        raise ValueError(f"B: its {G} groups must divide the {H} heads of x")
    if initial_state is not None:
        check_shape("initial_state", initial_state, ("batch", "heads", "head_dim", "d_state"), (Bt, H, P, N))
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name}: expected a real floating point tensor, got dtype {t.dtype}")
    return compute_dtype(x, dt, A, B, C, initial_state)


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


# ----------------------------------------------------------------------------- dispatch


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
             tap_positions: TapPositions | None = None, backend: str = "auto", chunk_size: int = 64) -> SSDResult:
    """Mamba-2's scan (module docstring) with ``backend`` ``"auto"`` (Triton on CUDA, else
    ``"chunked"``), ``"triton"``, ``"chunked"`` or ``"ref"``; see
    :func:`~seqlens.models.kernels.dispatch.resolve_backend`."""
    chosen = resolve_backend("ssd", backend, x)
    if chosen == "ref":
        return ssd_ref(x, dt, A, B, C, initial_state, tap_positions)
    if chosen == "chunked":
        return ssd_chunked(x, dt, A, B, C, initial_state, tap_positions, chunk_size)
    from .ssd_triton import ssd_triton  # lazy: see the module docstring

    return ssd_triton(x, dt, A, B, C, initial_state, tap_positions)
