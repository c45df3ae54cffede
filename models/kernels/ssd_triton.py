"""Mamba-2's scan (:mod:`.ssd`) as a Triton kernel, with state taps.

Import this module only once the Triton backend is chosen (:func:`~.ssd.ssd_scan` does so
lazily): ``triton.jit`` decides between compiling and the CPU interpreter (``TRITON_INTERPRET=1``)
when the kernel below is *defined*.

:func:`ssd_triton` has the arguments, layouts (``x [Bt, L, H, P]``, ``dt [Bt, L, H]``, ``A [H]``,
``B, C [Bt, L, G, N]``, states ``[Bt, H, P, N]``) and result of :func:`~.ssd.ssd_ref`, and must
equal it up to float rounding.

Forward. One program owns one (batch row, head, block of ``BLOCK_P`` value channels); its state
``S [BLOCK_P, N]`` (``N`` padded to a power of two, masked) stays in registers, in float32 (float64
for float64 inputs), while it walks the sequence. Each step loads ``x [BLOCK_P]``, the head's
scalar ``Δ`` and its group's ``B, C [N]`` through their strides (no copies), updates
``S = exp(Δ A_h) S + Δ x Bᵀ``, stores ``y = S C`` and, where the int32 tap map ``[L]`` (position
-> tap slot, -1 = none) says so, the state. The final state is stored once at the end.

Backward. There is no Triton backward: with autograd on, backward recomputes the forward with
the chunked PyTorch form (:func:`~.ssd.ssd_chunked`, equal to this kernel) and differentiates
that. Training therefore costs one chunked forward more than inference; analyses (no grad) run
the kernel alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import SSDResult, TapPositions, validate_ssd_inputs
from .common import validate_tap_positions as _validate_tap_positions
from .dispatch import resolve_backend
from .ssd_ref import ssd_chunked

__all__ = ["MAX_BLOCK_P", "ssd_triton"]

#: Most value channels per program (one program per batch row, head and block).
MAX_BLOCK_P = 64

_add = tl.standard._sum_combine  # tl.sum's own combine (cheaper in the interpreter; see selective_scan_triton)


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, hT_ptr, taps_ptr, tapmap_ptr,
    seq_len, n_heads, head_dim, d_state, heads_per_group, n_taps,
    s_xb, s_xl, s_xh, s_xp, s_db, s_dl, s_dh, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn,
    HAS_H0: tl.constexpr, HAS_TAPS: tl.constexpr, CDT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Scan one (batch row, head, channel block). ``y [Bt, L, H, P]``, ``h0, hT [Bt, H, P, N]``
    and ``taps [Bt, T, H, P, N]`` are contiguous; the inputs may have any strides."""
    pid_b = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < head_dim, offs_n < d_state
    mask_pn = mask_p[:, None] & mask_n[None, :]
    state_numel = n_heads * head_dim * d_state
    st_off = head * head_dim * d_state + offs_p[:, None] * d_state + offs_n[None, :]
    A = tl.load(A_ptr + head).to(CDT)
    S = tl.zeros([BLOCK_P, BLOCK_N], dtype=CDT)
    if HAS_H0:
        S = tl.load(h0_ptr + pid_b * state_numel + st_off, mask=mask_pn, other=0.0).to(CDT)
    group = head // heads_per_group
    x_p = x_ptr + pid_b * s_xb + head * s_xh + offs_p * s_xp
    d_p = dt_ptr + pid_b * s_db + head * s_dh
    B_p = B_ptr + pid_b * s_Bb + group * s_Bg + offs_n * s_Bn
    C_p = C_ptr + pid_b * s_Cb + group * s_Cg + offs_n * s_Cn
    y_p = y_ptr + pid_b * seq_len * n_heads * head_dim + head * head_dim + offs_p
    taps_rows = taps_ptr + pid_b * n_taps * state_numel + st_off
    tap_p = tapmap_ptr
    for _ in range(0, seq_len):
        x = tl.load(x_p, mask=mask_p, other=0.0).to(CDT)
        dt = tl.load(d_p).to(CDT)
        b_t = tl.load(B_p, mask=mask_n, other=0.0).to(CDT)
        c_t = tl.load(C_p, mask=mask_n, other=0.0).to(CDT)
        S = tl.exp(dt * A) * S + (dt * x)[:, None] * b_t[None, :]
        tl.store(y_p, tl.reduce(S * c_t[None, :], 1, _add).to(y_ptr.dtype.element_ty), mask=mask_p)
        if HAS_TAPS:
            slot = tl.load(tap_p)
            tl.store(taps_rows + tl.maximum(slot, 0).to(tl.int64) * state_numel, S,
                     mask=tl.where(slot >= 0, mask_pn, False))
            tap_p += 1
        x_p, d_p, B_p, C_p = x_p + s_xl, d_p + s_dl, B_p + s_Bl, C_p + s_Cl
        y_p += n_heads * head_dim
    tl.store(hT_ptr + pid_b * state_numel + st_off, S, mask=mask_pn)


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
             taps_at: list[int] | None, cdt: torch.dtype) -> SSDResult:
    """Launch the kernel; returns ``y``, the final state and the taps in ``cdt``."""
    Bt, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    y = x.new_empty((Bt, L, H, P), dtype=cdt)
    hT = x.new_empty((Bt, H, P, N), dtype=cdt)
    n_taps = len(taps_at or ())
    taps = x.new_empty((Bt, max(n_taps, 1), H, P, N), dtype=cdt)
    tapmap = torch.full((max(L, 1),), -1, dtype=torch.int32, device=x.device)
    for slot, p in enumerate(taps_at or ()):
        tapmap[p] = slot
    h0c = None if h0 is None else h0.to(cdt).contiguous()
    block_p = min(MAX_BLOCK_P, triton.next_power_of_2(P))
    grid = (Bt, H, triton.cdiv(P, block_p))
    _ssd_fwd_kernel[grid](
        x, dt, A, B, C, h0c if h0c is not None else hT, y, hT, taps, tapmap,
        L, H, P, N, H // G, max(n_taps, 1),
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        HAS_H0=h0c is not None, HAS_TAPS=n_taps > 0, CDT=_TL_DTYPE[cdt],
        BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(N),
    )
    return SSDResult(y, hT, taps[:, :n_taps] if taps_at is not None else None)


class _TritonSSDFn(torch.autograd.Function):
    """The kernel forward; backward differentiates the chunked form (module docstring)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, taps_at, cdt):  # type: ignore[override]
        ctx.save_for_backward(x, dt, A, B, C, h0)
        ctx.taps_at, ctx.has_h0 = taps_at, h0 is not None
        res = _forward(x, dt, A, B, C, h0, taps_at, cdt)
        return res.y, res.final_state, res.taps if res.taps is not None else x.new_zeros(0, dtype=cdt)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gS, gtaps):  # type: ignore[override]
        saved = ctx.saved_tensors
        with torch.enable_grad():
            ins = [t.detach().requires_grad_(need) if t is not None else None
                   for t, need in zip(saved, ctx.needs_input_grad)]
            res = ssd_chunked(*ins[:5], ins[5], ctx.taps_at)
            outs, grads = [res.y, res.final_state], [gy, gS]
            if res.taps is not None:
                outs.append(res.taps)
                grads.append(gtaps)
            wrt = [t for t in ins if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(outs, wrt, grads, allow_unused=True))
        return (*(next(got) if t is not None and t.requires_grad else None for t in ins), None, None)


def ssd_triton(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
               tap_positions: TapPositions | None = None) -> SSDResult:
    """Mamba-2's scan in Triton, equal to :func:`~.ssd.ssd_ref` (same arguments and result);
    inputs on one CUDA device (or CPU under ``TRITON_INTERPRET=1``), any strides; differentiable
    (backward through the chunked form)."""
    cdt = validate_ssd_inputs(x, dt, A, B, C, initial_state)
    taps_at = _validate_tap_positions(tap_positions, x.shape[1])
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C), ("initial_state", initial_state)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
    resolve_backend("ssd", "triton", x)  # raises for CPU tensors without the interpreter
    if x.shape[1] == 0 or x.numel() == 0 or B.shape[-1] == 0:  # nothing for a kernel to launch on
        return ssd_chunked(x, dt, A, B, C, initial_state, tap_positions)
    y, S, taps = _TritonSSDFn.apply(x, dt, A, B, C, initial_state, taps_at, cdt)
    return SSDResult(y, S, taps if taps_at is not None else None)
