"""Triton kernels for ``h_t = a_t ⊙ h_{t−1} + b_t`` (forward and backward).

Import this module only once the Triton backend is chosen (``linear_recurrence`` does so lazily):
``triton.jit`` decides between compiling and the CPU interpreter (``TRITON_INTERPRET=1``) when
the kernels below are *defined*.

Layout: ``a, b [B, L, D]`` with any strides. One program owns one batch row and ``BLOCK_D``
channels and walks the sequence; each step loads ``[BLOCK_D]`` contiguous channels (coalesced for
the usual ``stride(2) = 1``). The state stays in registers in the accumulator dtype: float32, or
float64 when the output is float64 (the dtype of the ``h`` buffer decides).

Backward (the adjoint recurrence, reverse time), with ``gh_t = ∂Loss/∂h_t`` in total::

    gh_t = gy_t + a_{t+1} gh_{t+1}        (gh_{L} = 0)
    ga_t = gh_t h_{t−1},  gb_t = gh_t,    gh0 = a_0 gh_0

where ``h_{−1} = h0`` (zeros if None). It reads ``a`` and the saved ``h``; nothing is recomputed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: channels per program: with Triton's default 4 warps (128 threads), one channel per thread.
#: Not tuned on a GPU; small ``B · D`` gives few programs (the time loop is sequential).
MAX_BLOCK_D = 128


@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, h0_ptr, h_ptr,
    L, D,
    s_ab, s_al, s_ad, s_bb, s_bl, s_bd, s_h0b, s_h0d,
    HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """h[b, t, d] = a[b, t, d] h[b, t−1, d] + b[b, t, d]; h is contiguous [B, L, D]. The
    pointers walk forward one step per iteration (64-bit, so no ``t · stride`` can overflow)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    acc_t = h_ptr.dtype.element_ty
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * s_h0b + offs * s_h0d, mask=mask, other=0.0).to(acc_t)
    else:
        h = tl.zeros([BLOCK_D], dtype=acc_t)
    a_ptrs = a_ptr + pid_b * s_ab + offs * s_ad
    b_ptrs = b_ptr + pid_b * s_bb + offs * s_bd
    h_ptrs = h_ptr + pid_b * L * D + offs
    for _ in range(0, L):
        a = tl.load(a_ptrs, mask=mask, other=0.0).to(acc_t)
        x = tl.load(b_ptrs, mask=mask, other=0.0).to(acc_t)
        h = a * h + x
        tl.store(h_ptrs, h, mask=mask)
        a_ptrs += s_al
        b_ptrs += s_bl
        h_ptrs += D


@triton.jit
def _adjoint_step(gy_ptrs, ga_ptrs, gb_ptrs, gh, a_next, h_prev, mask):
    """One reverse step: gh_t = gy_t + a_{t+1} gh_{t+1}; store ga_t = gh_t h_{t−1}, gb_t = gh_t."""
    gh = tl.load(gy_ptrs, mask=mask, other=0.0).to(gh.dtype) + a_next * gh
    tl.store(ga_ptrs, gh * h_prev, mask=mask)
    tl.store(gb_ptrs, gh, mask=mask)
    return gh


@triton.jit
def _backward_kernel(
    a_ptr, h_ptr, h0_ptr, gy_ptr, ga_ptr, gb_ptr, gh0_ptr,
    L, D,
    s_ab, s_al, s_ad, s_h0b, s_h0d, s_gb, s_gl, s_gd,
    HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Reverse-time adjoint for L ≥ 1; h, ga, gb are contiguous [B, L, D], gh0 contiguous [B, D].
    Pointers start at t = L−1 and walk back; steps t = L−1 .. 1 read h_{t−1} from h, step 0
    (peeled) reads h0."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    acc_t = h_ptr.dtype.element_ty
    last = pid_b * 0 + (L - 1)  # t = L−1 as int64, so last · stride cannot overflow
    a_first = a_ptr + pid_b * s_ab + offs * s_ad
    gy_first = gy_ptr + pid_b * s_gb + offs * s_gd
    dense_first = pid_b * L * D + offs  # offset of t = 0 in the contiguous [B, L, D] buffers
    a_ptrs, gy_ptrs, dense = a_first + last * s_al, gy_first + last * s_gl, dense_first + last * D
    gh = tl.zeros([BLOCK_D], dtype=acc_t)
    a_next = tl.zeros([BLOCK_D], dtype=acc_t)  # a_{t+1}; its value at t = L−1 is irrelevant
    for _ in range(0, L - 1):
        h_prev = tl.load(h_ptr + dense - D, mask=mask, other=0.0)
        gh = _adjoint_step(gy_ptrs, ga_ptr + dense, gb_ptr + dense, gh, a_next, h_prev, mask)
        a_next = tl.load(a_ptrs, mask=mask, other=0.0).to(acc_t)
        a_ptrs -= s_al
        gy_ptrs -= s_gl
        dense -= D
    if HAS_H0:
        h_init = tl.load(h0_ptr + pid_b * s_h0b + offs * s_h0d, mask=mask, other=0.0).to(acc_t)
    else:
        h_init = tl.zeros([BLOCK_D], dtype=acc_t)
    gh = _adjoint_step(gy_first, ga_ptr + dense_first, gb_ptr + dense_first, gh, a_next, h_init, mask)
    a_0 = tl.load(a_first, mask=mask, other=0.0).to(acc_t)
    tl.store(gh0_ptr + pid_b * D + offs, a_0 * gh, mask=mask)


def _grid(batch: int, dim: int, block_d: int) -> tuple[int, int]:
    """Programs: one per (batch row, block of ``block_d`` channels)."""
    return (batch, triton.cdiv(dim, block_d))


def _block_d(dim: int, block_d: int | None) -> int:
    """``block_d`` if given (a power of two), else the smallest power of two ≥ ``dim``, at most
    :data:`MAX_BLOCK_D`."""
    if block_d is None:
        return min(MAX_BLOCK_D, triton.next_power_of_2(max(dim, 1)))
    if isinstance(block_d, bool) or not isinstance(block_d, int) or block_d < 1 or block_d & (block_d - 1):
        raise ValueError(f"block_d: expected a power of two ≥ 1, got {block_d!r}")
    return block_d


class _LinearRecurrenceFn(torch.autograd.Function):
    """``h = scan(a, b, h0)`` with the Triton forward and the adjoint Triton backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, a: Tensor, b: Tensor, h0: Tensor | None, out_dtype: torch.dtype, block_d: int
    ) -> Tensor:
        batch, seq_len, dim = a.shape
        h = torch.empty((batch, seq_len, dim), dtype=out_dtype, device=a.device)
        h0_arg = h if h0 is None else h0  # a dummy pointer when HAS_H0 is false
        s_h0 = (0, 0) if h0 is None else h0.stride()
        if batch * dim > 0:  # an empty grid is not launched
            _forward_kernel[_grid(batch, dim, block_d)](
                a, b, h0_arg, h, seq_len, dim, *a.stride(), *b.stride(), *s_h0,
                HAS_H0=h0 is not None, BLOCK_D=block_d,
            )
        ctx.save_for_backward(a, h, h0)
        ctx.block_d = block_d
        ctx.dtypes = (b.dtype, None if h0 is None else h0.dtype)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        batch, seq_len, dim = a.shape
        ga, gb = torch.empty_like(h), torch.empty_like(h)
        gh0 = h.new_zeros((batch, dim))
        h0_arg = h if h0 is None else h0
        s_h0 = (0, 0) if h0 is None else h0.stride()
        if batch * seq_len * dim > 0:  # for L = 0, h0 passes straight through (zero gradient here)
            _backward_kernel[_grid(batch, dim, ctx.block_d)](
                a, h, h0_arg, gy, ga, gb, gh0, seq_len, dim, *a.stride(), *s_h0, *gy.stride(),
                HAS_H0=h0 is not None, BLOCK_D=ctx.block_d,
            )
        b_dtype, h0_dtype = ctx.dtypes
        gh0_out = None if h0 is None else gh0.to(h0_dtype)
        return ga.to(a.dtype), gb.to(b_dtype), gh0_out, None, None


def linear_recurrence_triton(
    a: Tensor, b: Tensor, h0: Tensor | None = None, out_dtype: torch.dtype = torch.float32,
    block_d: int | None = None,
) -> Tensor:
    """All states ``h [B, L, D]`` (``out_dtype``, contiguous) of ``h_t = a_t ⊙ h_{t−1} + b_t``
    for ``a, b [B, L, D]`` and ``h0 [B, D]`` or None, any strides and any real ``a``;
    differentiable in ``a``, ``b``, ``h0`` (not twice). Inputs are assumed validated by
    :func:`~seqlens.models.kernels.linear_recurrence.linear_recurrence`; ``block_d`` channels per
    program (a power of two; default: ``next_power_of_2(D)`` capped at :data:`MAX_BLOCK_D`)."""
    return _LinearRecurrenceFn.apply(a, b, h0, out_dtype, _block_d(a.shape[2], block_d))
