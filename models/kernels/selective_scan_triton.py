"""Mamba-1 selective scan as Triton kernels (forward and backward), with state taps.

Import this module only once the Triton backend is chosen (:func:`~.selective_scan.selective_scan`
does so lazily): ``triton.jit`` decides between compiling and the CPU interpreter
(``TRITON_INTERPRET=1``) when the kernels below are *defined*.

:func:`selective_scan_triton` has the signature, argument layouts (mamba-ssm's: ``u, delta, z
[Bt, Dn, L]``, ``A [Dn, N]``, ``B, C [Bt, N, L]``) and return convention of
:func:`~.selective_scan.selective_scan_ref`, and must equal it up to float rounding.

Forward. One program owns one batch row and ``BLOCK_D`` channels; its state ``h [BLOCK_D, N]``
(``N`` padded to a power of two, masked) stays in registers while it walks the sequence. Each
step loads ``u, delta, z [BLOCK_D]`` and ``B, C [N]`` through their strides (any strides, no
copies; ``[Bt, L, ...]`` memory, as Mamba blocks produce it, makes the channel loads
contiguous), applies ``delta_bias``, the softplus, the ``D`` skip and the ``silu(z)`` gate in
registers, and stores ``y`` into ``[Bt, L, Dn]`` memory (returned as a ``[Bt, Dn, L]`` view, as
the chunked path does). An int32 map ``[L]`` (position -> tap slot, -1 = none) turns state taps
into one masked store per step; the final state is stored once at the end. Arithmetic is in
float32 (float64 when any input is float64); ``y`` is stored in ``u``'s dtype, states in the
compute dtype.

Backward. With autograd on, forward also stores the states before steps ``0, K, 2K, ...``
(``K = CHECKPOINT_EVERY``, or ``L`` if shorter). The backward kernel (same grid) walks these
chunks in reverse: it recomputes the chunk's states from its checkpoint into a global scratch
buffer ``[Bt, K + 1, Dn, N]``, then runs the adjoint recurrence back through the chunk. With ``a_t = exp(dt_t A)``, ``y0_t = C_t . h_t + D u_t``
(before the gate), ``gy0_t = gy_t silu(z_t)`` and ``gh_t = dLoss/dh_t``::

    gh_t  = a_{t+1} * gh_{t+1} + gy0_t C_t + gtap_t        (gh enters as dLoss/dfinal_state)
    gz_t  = gy_t y0_t silu'(z_t)         gD += gy0_t u_t
    gC_t  = sum_d gy0_t h_t              gB_t = sum_d gh_t dt_t u_t
    gu_t  = dt_t sum_n gh_t B_t + D gy0_t
    gdt_t = sum_n gh_t (A a_t h_{t-1}) + u_t sum_n gh_t B_t     gA += gh_t dt_t a_t h_{t-1}
    gdelta_t = gdt_t sigmoid(delta_t + bias) (softplus) or gdt_t;   gbias += gdelta_t
    ginitial_state = a_0 * gh_0

Sums over channels (``gB``, ``gC``) are written per program and summed in PyTorch, sums over
batch rows (``gA``, ``gD``, ``gbias``) likewise: no atomics, deterministic. Memory: one state
per chunk and the scratch buffer; nothing of size ``[Bt, L, Dn, N]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import resolve_backend
from .common import ScanOutput, TapPositions
from .common import compute_dtype as _compute_dtype
from .common import package_scan as _package
from .common import validate_scan_inputs as _validate_inputs
from .common import validate_tap_positions as _validate_tap_positions
from .selective_scan_ref import selective_scan_ref

__all__ = ["BLOCK_D", "CHECKPOINT_EVERY", "selective_scan_triton"]

#: Most channels per program. Each program walks the whole sequence, so the scan is latency
#: bound and smaller blocks spread it over more SMs; a 32 x 16 float32 state (d_state 16) keeps
#: the backward kernel in registers with 4 warps (see :func:`_launch_config`).
BLOCK_D = 32

#: Steps between the states that forward keeps for backward (backward recomputes one chunk of
#: this many steps into a ``[Bt, K + 1, Dn, N]`` scratch buffer).
CHECKPOINT_EVERY = 64


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #
#
# The per-step work is written out inside the loops rather than in @triton.jit helpers: the
# interpreter re-patches triton.language on every helper call (milliseconds each), which would
# dominate the CPU test time. Two expressions recur, in float32 (float64) registers:
#
#   softplus(x) = x for x > 20 (torch's threshold), else log1p(exp(x)) with log1p(e) written as
#                 Goldberg's log(w) * e / (w - 1), w = 1 + e, exact for tiny e (libdevice's
#                 log1p would not run in the interpreter)
#   sigmoid(z)  = 1 / (1 + exp(-z))
#
# Sums over an axis call tl.reduce with tl.sum's own combine function: that is all tl.sum does
# for floats, and it skips tl.sum's jit wrapper (about 1 ms per call in the interpreter, which
# recognises this combine function and runs np.sum).

_add = tl.standard._sum_combine


@triton.jit
def _load_channel_params(A_ptr, D_ptr, bias_ptr, offs_d, offs_n, s_ad, s_an, s_D, s_bias,
                         mask_d, mask_dn, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                         CDT: tl.constexpr, BLOCK_D: tl.constexpr):
    """``A [BLOCK_D, BLOCK_N]``, ``D [BLOCK_D]`` and ``delta_bias [BLOCK_D]`` (zeros if absent)."""
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                other=0.0).to(CDT)
    skip = tl.zeros([BLOCK_D], dtype=CDT)
    bias = tl.zeros([BLOCK_D], dtype=CDT)
    if HAS_D:
        skip = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(CDT)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(CDT)
    return A, skip, bias


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, hT_ptr, taps_ptr, tapmap_ptr, ckpt_ptr,
    d_inner, d_state, seq_len, n_taps, ckpt_every,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_D, s_zb, s_zd, s_zl, s_bias, s_hb, s_hd, s_hn, s_yb, s_yd, s_yl,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_TAPS: tl.constexpr, SAVE_CKPT: tl.constexpr, CDT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Scan one (batch row, channel block): ``y [Bt, Dn, L]`` (any strides), final state
    ``hT [Bt, Dn, N]``, ``taps [Bt, T, Dn, N]`` at positions whose ``tapmap [L]`` slot is >= 0,
    and, when SAVE_CKPT, the state before steps 0, K, 2K, ... into ``ckpt [Bt, cdiv(L, K), Dn,
    N]`` (``K = ckpt_every``; state buffers contiguous)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < d_inner, offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    st_off = offs_d[:, None] * d_state + offs_n[None, :]  # in contiguous [.., Dn, N] buffers
    numel = d_inner * d_state
    A, skip, bias = _load_channel_params(A_ptr, D_ptr, bias_ptr, offs_d, offs_n, s_ad, s_an, s_D,
                                         s_bias, mask_d, mask_dn, HAS_D, HAS_BIAS, CDT, BLOCK_D)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=CDT)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * s_hb + offs_d[:, None] * s_hd + offs_n[None, :] * s_hn,
                    mask=mask_dn, other=0.0).to(CDT)
    u_p, dl_p = u_ptr + pid_b * s_ub + offs_d * s_ud, dl_ptr + pid_b * s_db + offs_d * s_dd
    B_p, C_p = B_ptr + pid_b * s_Bb + offs_n * s_Bn, C_ptr + pid_b * s_Cb + offs_n * s_Cn
    z_p, y_p = z_ptr + pid_b * s_zb + offs_d * s_zd, y_ptr + pid_b * s_yb + offs_d * s_yd
    tap_p, taps_rows = tapmap_ptr, taps_ptr + pid_b * n_taps * numel + st_off
    ckpt_rows = ckpt_ptr + pid_b * tl.cdiv(seq_len, ckpt_every) * numel + st_off
    for start in range(0, seq_len, ckpt_every):
        if SAVE_CKPT:  # the state before step `start` opens a backward chunk
            tl.store(ckpt_rows, h, mask=mask_dn)
            ckpt_rows += numel
        for t in range(start, tl.minimum(start + ckpt_every, seq_len)):
            u = tl.load(u_p, mask=mask_d, other=0.0).to(CDT)
            dt = tl.load(dl_p, mask=mask_d, other=0.0).to(CDT) + bias
            if SOFTPLUS:  # stable softplus, written out in each kernel: a @triton.jit helper costs
                # ~1 ms per call per step in the interpreter, which CI's kernel tests run through
                e = tl.exp(tl.minimum(dt, 20.0))
                w = 1.0 + e
                log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                dt = tl.where(dt > 20.0, dt, log1p)
            b_t = tl.load(B_p, mask=mask_n, other=0.0).to(CDT)
            c_t = tl.load(C_p, mask=mask_n, other=0.0).to(CDT)
            # Mamba eq. 2a/2b (ZOH for A, Euler for B): h_t = exp(dt A) h_{t-1} + dt B_t u_t
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b_t[None, :]
            y = tl.reduce(h * c_t[None, :], 1, _add)
            if HAS_D:
                y += skip * u
            if HAS_Z:
                z = tl.load(z_p, mask=mask_d, other=0.0).to(CDT)
                y = y * z / (1.0 + tl.exp(-z))
                z_p += s_zl
            tl.store(y_p, y.to(y_ptr.dtype.element_ty), mask=mask_d)
            if HAS_TAPS:
                slot = tl.load(tap_p)
                tl.store(taps_rows + tl.maximum(slot, 0).to(tl.int64) * numel, h,
                         mask=tl.where(slot >= 0, mask_dn, False))
                tap_p += 1
            u_p, dl_p, B_p, C_p, y_p = u_p + s_ul, dl_p + s_dl, B_p + s_Bl, C_p + s_Cl, y_p + s_yl
    tl.store(hT_ptr + pid_b * numel + st_off, h, mask=mask_dn)


@triton.jit
def _recompute_chunk(ckpt_rows, scr_rows, numel, n_steps, u_p, dl_p, B_p, A, bias,
                     s_ul, s_dl, s_Bl, mask_d, mask_n, mask_dn,
                     SOFTPLUS: tl.constexpr, CDT: tl.constexpr):
    """Recompute one backward chunk of ``n_steps`` steps from its checkpoint.

    ``ckpt_rows`` and ``scr_rows`` are ``[BLOCK_D, BLOCK_N]`` pointer blocks (the checkpoint, and
    slot 0 of this program's scratch), ``u_p, dl_p [BLOCK_D]`` and ``B_p [BLOCK_N]`` point at
    the chunk's first step. Scratch slot 0 gets the state before the chunk, slot ``i + 1`` the
    state after its step ``i`` (slots ``numel`` apart). Returns the state after the last step.
    """
    h = tl.load(ckpt_rows, mask=mask_dn, other=0.0).to(CDT)
    tl.store(scr_rows, h, mask=mask_dn)
    for i in range(0, n_steps):
        u = tl.load(u_p, mask=mask_d, other=0.0).to(CDT)
        dt = tl.load(dl_p, mask=mask_d, other=0.0).to(CDT) + bias
        if SOFTPLUS:
            e = tl.exp(tl.minimum(dt, 20.0))
            w = 1.0 + e
            log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
            dt = tl.where(dt > 20.0, dt, log1p)
        b_t = tl.load(B_p, mask=mask_n, other=0.0).to(CDT)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b_t[None, :]
        scr_rows += numel
        tl.store(scr_rows, h, mask=mask_dn)
        u_p, dl_p, B_p = u_p + s_ul, dl_p + s_dl, B_p + s_Bl
    return h


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    gy_ptr, ghT_ptr, gtaps_ptr, tapmap_ptr, ckpt_ptr, scratch_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    d_inner, d_state, seq_len, n_taps, ckpt_every,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_D, s_zb, s_zd, s_zl, s_bias, s_gyb, s_gyd, s_gyl,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_TAPS: tl.constexpr, CDT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Backward of one (batch row, channel block), chunk by chunk in reverse (equations in the
    module docstring). Writes ``gu, gdelta, gz [Bt, L, Dn]``, ``gh0 [Bt, Dn, N]`` and partial
    sums: ``gA [Bt, Dn, N]``, ``gD, gbias [Bt, Dn]`` over this row's steps, ``gB, gC [Bt,
    n_blocks, L, N]`` over this block's channels. Every buffer but the inputs and ``gy [Bt, Dn,
    L]`` is contiguous; ``scratch`` is ``[Bt, K + 1, Dn, N]``."""
    pid_b, pid_d = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < d_inner, offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    st_off = offs_d[:, None] * d_state + offs_n[None, :]
    numel = d_inner * d_state
    A, skip, bias = _load_channel_params(A_ptr, D_ptr, bias_ptr, offs_d, offs_n, s_ad, s_an, s_D,
                                         s_bias, mask_d, mask_dn, HAS_D, HAS_BIAS, CDT, BLOCK_D)
    u_row, dl_row = u_ptr + pid_b * s_ub + offs_d * s_ud, dl_ptr + pid_b * s_db + offs_d * s_dd
    B_row, C_row = B_ptr + pid_b * s_Bb + offs_n * s_Bn, C_ptr + pid_b * s_Cb + offs_n * s_Cn
    z_row, gy_row = z_ptr + pid_b * s_zb + offs_d * s_zd, gy_ptr + pid_b * s_gyb + offs_d * s_gyd
    g_row = pid_b * seq_len * d_inner + offs_d  # offsets into gu, gdelta, gz
    p_row = (pid_b * tl.num_programs(1) + pid_d) * seq_len * d_state + offs_n  # into gB, gC
    n_ckpt = tl.cdiv(seq_len, ckpt_every)
    ckpt_rows = ckpt_ptr + pid_b * n_ckpt * numel + st_off
    scr_rows = scratch_ptr + pid_b * (ckpt_every + 1) * numel + st_off
    gtap_rows = gtaps_ptr + pid_b * n_taps * numel + st_off
    carry = tl.load(ghT_ptr + pid_b * numel + st_off, mask=mask_dn, other=0.0).to(CDT)
    gA = tl.zeros([BLOCK_D, BLOCK_N], dtype=CDT)
    gD = tl.zeros([BLOCK_D], dtype=CDT)
    gbias = tl.zeros([BLOCK_D], dtype=CDT)
    for cc in range(0, n_ckpt):
        c = n_ckpt - 1 - cc
        start = c * ckpt_every
        n_steps = tl.minimum(ckpt_every, seq_len - start)
        first = start.to(tl.int64)
        h = _recompute_chunk(ckpt_rows + c.to(tl.int64) * numel, scr_rows, numel, n_steps,
                             u_row + first * s_ul, dl_row + first * s_dl, B_row + first * s_Bl,
                             A, bias, s_ul, s_dl, s_Bl, mask_d, mask_n, mask_dn, SOFTPLUS, CDT)
        tl.debug_barrier()  # scratch written above is read below, possibly by other threads
        last = first + n_steps - 1
        u_p, dl_p = u_row + last * s_ul, dl_row + last * s_dl
        B_p, C_p = B_row + last * s_Bl, C_row + last * s_Cl
        z_p, gy_p, tap_p = z_row + last * s_zl, gy_row + last * s_gyl, tapmap_ptr + last
        g_p, p_p = g_row + last * d_inner, p_row + last * d_state
        scr_p = scr_rows + (n_steps - 1).to(tl.int64) * numel  # h_{t-1}, for t = last
        for j in range(0, n_steps):
            u = tl.load(u_p, mask=mask_d, other=0.0).to(CDT)
            x = tl.load(dl_p, mask=mask_d, other=0.0).to(CDT) + bias
            dt = x
            if SOFTPLUS:
                e = tl.exp(tl.minimum(x, 20.0))
                w = 1.0 + e
                log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
                dt = tl.where(x > 20.0, x, log1p)
            b_t = tl.load(B_p, mask=mask_n, other=0.0).to(CDT)
            c_t = tl.load(C_p, mask=mask_n, other=0.0).to(CDT)
            gy = tl.load(gy_p, mask=mask_d, other=0.0).to(CDT)
            if HAS_Z:  # y = y0 silu(z): gz = gy y0 silu'(z), and gy becomes dLoss/dy0
                z = tl.load(z_p, mask=mask_d, other=0.0).to(CDT)
                sig = 1.0 / (1.0 + tl.exp(-z))
                y0 = tl.reduce(h * c_t[None, :], 1, _add) + skip * u
                tl.store(gz_ptr + g_p, gy * y0 * sig * (1.0 + z * (1.0 - sig)), mask=mask_d)
                gy = gy * z * sig
                z_p -= s_zl
            gh = carry + gy[:, None] * c_t[None, :]  # dLoss/dh_t
            if HAS_TAPS:
                slot = tl.load(tap_p)
                gh += tl.load(gtap_rows + tl.maximum(slot, 0).to(tl.int64) * numel,
                              mask=tl.where(slot >= 0, mask_dn, False), other=0.0).to(CDT)
                tap_p -= 1
            tl.store(gC_ptr + p_p, tl.reduce(gy[:, None] * h, 0, _add), mask=mask_n)
            tl.store(gB_ptr + p_p, tl.reduce(gh * (dt * u)[:, None], 0, _add), mask=mask_n)
            g_du = tl.reduce(gh * b_t[None, :], 1, _add)  # dLoss/d(dt u)
            tl.store(gu_ptr + g_p, g_du * dt + gy * skip, mask=mask_d)
            h_prev = tl.load(scr_p, mask=mask_dn, other=0.0).to(CDT)
            a = tl.exp(dt[:, None] * A)
            g_ah = gh * a * h_prev  # dLoss/d(dt A), elementwise
            gA += g_ah * dt[:, None]
            g_dt = tl.reduce(g_ah * A, 1, _add) + g_du * u
            if SOFTPLUS:
                g_dt = g_dt / (1.0 + tl.exp(-x))
            tl.store(gdl_ptr + g_p, g_dt, mask=mask_d)
            if HAS_D:
                gD += gy * u
            if HAS_BIAS:
                gbias += g_dt
            carry, h = a * gh, h_prev
            u_p, dl_p, B_p, C_p, gy_p = u_p - s_ul, dl_p - s_dl, B_p - s_Bl, C_p - s_Cl, gy_p - s_gyl
            g_p, p_p, scr_p = g_p - d_inner, p_p - d_state, scr_p - numel
        tl.debug_barrier()  # the next chunk overwrites scratch that was just read
    tl.store(gh0_ptr + pid_b * numel + st_off, carry, mask=mask_dn)
    tl.store(gA_ptr + pid_b * numel + st_off, gA, mask=mask_dn)
    tl.store(gD_ptr + pid_b * d_inner + offs_d, gD, mask=mask_d)
    tl.store(gbias_ptr + pid_b * d_inner + offs_d, gbias, mask=mask_d)


# --------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------- #

_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}
_MAX_STATE_BYTES = 4096

#: (u, delta, A, B, C, D, z, delta_bias, initial_state); the optional ones may be None.
_Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _launch_config(d_inner: int, d_state: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_N, num_warps)``: channels per program, the state size padded to a power
    of two, and warps for a ``[BLOCK_D, BLOCK_N]`` state computed in ``dtype``.

    At most :data:`BLOCK_D` channels, and at most :data:`_MAX_STATE_BYTES` of state per
    program: ptxas for sm_90 fits the backward kernel (the heaviest) in registers up to 1024
    float32 elements with 4 warps (512 float64) and spills beyond.
    """
    block_n = max(2, triton.next_power_of_2(d_state))
    max_d = max(2, _MAX_STATE_BYTES // (dtype.itemsize * block_n))
    block_d = min(BLOCK_D, max(2, triton.next_power_of_2(d_inner)), max_d)
    return block_d, block_n, max(1, min(4, block_d * block_n // 128))


def _checkpoint_every(seq_len: int) -> int:
    """Steps per backward chunk: :data:`CHECKPOINT_EVERY`, or ``seq_len`` if shorter."""
    return max(1, min(CHECKPOINT_EVERY, seq_len))


def _strides(tensor: Tensor | None, ndim: int) -> tuple[int, ...]:
    """``tensor.stride()``, or ``ndim`` zeros for an absent optional input."""
    return (0,) * ndim if tensor is None else tuple(tensor.stride())


def _or(tensor: Tensor | None, placeholder: Tensor) -> Tensor:
    """``tensor``, or ``placeholder`` where the kernel needs some pointer it will not read."""
    return placeholder if tensor is None or tensor.numel() == 0 else tensor


def _tap_map(taps_at: Sequence[int], seq_len: int, device: torch.device) -> Tensor:
    """int32 ``[max(seq_len, 1)]``: the tap slot of each position, -1 where none."""
    tapmap = torch.full((max(seq_len, 1),), -1, dtype=torch.int32, device=device)
    if taps_at:
        index = torch.tensor(list(taps_at), dtype=torch.long, device=device)
        tapmap[index] = torch.arange(len(taps_at), dtype=torch.int32, device=device)
    return tapmap


def _on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s GPU current while launching (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _scan_forward(ins: _Inputs, delta_softplus: bool, taps_at: Sequence[int], save_ckpt: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """Launch the forward kernel on ``seq_len >= 1`` inputs.

    Returns ``(y [Bt, L, Dn] in u's dtype, final state [Bt, Dn, N], taps [Bt, T, Dn, N],
    checkpoints [Bt, n_ckpt, Dn, N] (n_ckpt = 0 unless save_ckpt), tap map [L], interval)``;
    states in the compute dtype.
    """
    u, delta, A, B, C, D, z, bias, h0 = ins
    (batch, d_inner, seq_len), d_state = u.shape, A.shape[1]
    cdt = _compute_dtype(*ins)
    y = torch.empty((batch, seq_len, d_inner), dtype=u.dtype, device=u.device)
    hT = u.new_empty((batch, d_inner, d_state), dtype=cdt)
    taps = u.new_empty((batch, len(taps_at), d_inner, d_state), dtype=cdt)
    tapmap, every = _tap_map(taps_at, seq_len, u.device), _checkpoint_every(seq_len)
    n_ckpt = triton.cdiv(seq_len, every) if save_ckpt else 0
    ckpt = u.new_empty((batch, n_ckpt, d_inner, d_state), dtype=cdt)
    block_d, block_n, warps = _launch_config(d_inner, d_state, cdt)
    with _on_device(u):
        _scan_fwd_kernel[(batch, triton.cdiv(d_inner, block_d))](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(bias, u), _or(h0, hT),
            y, hT, _or(taps, hT), tapmap, _or(ckpt, hT),
            d_inner, d_state, seq_len, len(taps_at), every,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides(D, 1),
            *_strides(z, 3), *_strides(bias, 1), *_strides(h0, 3), *y.transpose(1, 2).stride(),
            SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=bias is not None, HAS_H0=h0 is not None, HAS_TAPS=len(taps_at) > 0,
            SAVE_CKPT=save_ckpt, CDT=_TL_DTYPE[cdt], BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=warps,
        )
    return y, hT, taps, ckpt, tapmap, every


def _scan_backward(ins: _Inputs, ckpt: Tensor, tapmap: Tensor, every: int, delta_softplus: bool,
                   gy: Tensor, ghT: Tensor, gtaps: Tensor) -> tuple[Tensor | None, ...]:
    """Launch the backward kernel; ``gy [Bt, L, Dn]`` (any strides), ``ghT [Bt, Dn, N]``,
    ``gtaps [Bt, T, Dn, N]``. Returns the gradients of ``ins`` in their dtypes (None for absent
    optional inputs)."""
    u, delta, A, B, C, D, z, bias, h0 = ins
    (batch, d_inner, seq_len), d_state = u.shape, A.shape[1]
    cdt = ckpt.dtype
    block_d, block_n, warps = _launch_config(d_inner, d_state, cdt)
    n_blocks = triton.cdiv(d_inner, block_d)
    g_bld = [u.new_empty((batch, seq_len, d_inner), dtype=cdt) for _ in range(2 + (z is not None))]
    g_parts = [u.new_empty((batch, n_blocks, seq_len, d_state), dtype=cdt) for _ in range(2)]
    g_rows = [u.new_empty((batch, d_inner), dtype=cdt) for _ in range(2)]
    gA, gh0 = (u.new_empty((batch, d_inner, d_state), dtype=cdt) for _ in range(2))
    scratch = u.new_empty((batch, every + 1, d_inner, d_state), dtype=cdt)
    gy_bdl, gtaps = gy.transpose(1, 2), gtaps.contiguous()
    with _on_device(u):
        _scan_bwd_kernel[(batch, n_blocks)](
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(bias, u),
            gy_bdl, ghT.contiguous(), _or(gtaps, gh0), tapmap, ckpt, scratch,
            g_bld[0], g_bld[1], g_bld[-1], gA, *g_parts, *g_rows, gh0,
            d_inner, d_state, seq_len, gtaps.shape[1], every,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides(D, 1),
            *_strides(z, 3), *_strides(bias, 1), *gy_bdl.stride(),
            SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=bias is not None, HAS_TAPS=gtaps.shape[1] > 0, CDT=_TL_DTYPE[cdt],
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps,
        )
    grads = (g_bld[0].transpose(1, 2), g_bld[1].transpose(1, 2), gA.sum(0),
             g_parts[0].sum(1).transpose(1, 2), g_parts[1].sum(1).transpose(1, 2),
             g_rows[0].sum(0), g_bld[2].transpose(1, 2) if z is not None else None,
             g_rows[1].sum(0), gh0)
    return tuple(None if x is None else g.to(x.dtype) for g, x in zip(grads, ins))


class _TritonScanFn(torch.autograd.Function):
    """The Triton scan with its Triton backward (see the module docstring).

    Outputs ``(y [Bt, L, Dn], final_state [Bt, Dn, N], taps [Bt, T, Dn, N])``. Saves the
    inputs, one state per :data:`CHECKPOINT_EVERY` steps and the tap map. Not twice
    differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
        C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
        initial_state: Tensor | None, delta_softplus: bool, taps_at: list[int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        ins = (u, delta, A, B, C, D, z, delta_bias, initial_state)
        y, hT, taps, ckpt, tapmap, every = _scan_forward(ins, delta_softplus, taps_at, True)
        ctx.save_for_backward(*ins, ckpt, tapmap)
        ctx.every, ctx.delta_softplus = every, delta_softplus
        return y, hT, taps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: Tensor, ghT: Tensor, gtaps: Tensor
    ) -> tuple[Tensor | None, ...]:
        *ins, ckpt, tapmap = ctx.saved_tensors
        grads = _scan_backward(tuple(ins), ckpt, tapmap, ctx.every, ctx.delta_softplus,
                               gy, ghT, gtaps)
        needed = (g if need else None for g, need in zip(grads, ctx.needs_input_grad))
        return (*needed, None, None)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def _check_devices(u: Tensor, named: dict[str, Tensor | None]) -> None:
    """Raise ``ValueError`` naming the first input that is not on ``u``'s device."""
    for name, tensor in named.items():
        if tensor is not None and tensor.device != u.device:
            raise ValueError(f"{name}: expected a tensor on {u.device} (the device of u), "
                             f"got {tensor.device}")


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    tap_positions: TapPositions | None = None,
) -> Tensor | ScanOutput:
    """Selective scan in Triton, equal to :func:`~.selective_scan.selective_scan_ref`.

    Inputs on one CUDA device (or CPU under ``TRITON_INTERPRET=1``), any strides, float16,
    bfloat16, float32 or float64. Differentiable in every tensor input when autograd is on (a
    Triton backward, see :class:`_TritonScanFn`); the returned ``y`` is a ``[Bt, Dn, L]`` view
    of ``[Bt, L, Dn]`` memory, like the chunked path's.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        return_final_state, tap_positions: As for :func:`~.selective_scan.selective_scan_ref`.

    Returns:
        ``y`` alone, or a :class:`~.selective_scan.ScanOutput` if ``return_final_state`` or
        ``tap_positions`` is given.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, devices or tap positions.
        RuntimeError: CPU inputs without ``TRITON_INTERPRET=1``.
    """
    batch, d_inner, seq_len, d_state = _validate_inputs(u, delta, A, B, C, D, z, delta_bias,
                                                        initial_state)
    taps_at = _validate_tap_positions(tap_positions, seq_len)
    ins = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_devices(u, dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias",
                                "initial_state"), ins)))
    resolve_backend("selective_scan", "triton", u)  # raises for CPU tensors without the interpreter
    if seq_len == 0:
        return _empty_scan(ins, taps_at, return_final_state)
    if batch * d_inner * d_state == 0:  # no state to scan: nothing for a kernel to launch on
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, return_final_state, tap_positions)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins):
        y, h, taps = _TritonScanFn.apply(*ins, delta_softplus, list(taps_at or ()))
    else:
        y, h, taps, *_ = _scan_forward(ins, delta_softplus, taps_at or (), save_ckpt=False)
    return _package(y.transpose(1, 2), h, None if taps_at is None else taps, return_final_state)


def _empty_scan(ins: _Inputs, taps_at: list[int] | None, return_final_state: bool
                ) -> Tensor | ScanOutput:
    """The result for ``seq_len == 0``: empty ``y``, final state = initial state (or zeros)."""
    u, A, h0 = ins[0], ins[2], ins[-1]
    batch, d_inner, _ = u.shape
    cdt = _compute_dtype(*ins)
    h = u.new_zeros((batch, d_inner, A.shape[1]), dtype=cdt) if h0 is None else h0.to(cdt, copy=True)
    taps = None if taps_at is None else h.new_zeros((batch, 0, d_inner, A.shape[1]))
    return _package(u.new_empty((batch, d_inner, 0)), h, taps, return_final_state)
