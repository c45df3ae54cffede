"""Triton kernel for causal attention statistics with an online softmax (flash-attention style).

Import only once the Triton backend is chosen (``attention_stats`` does so lazily): ``triton.jit``
fixes interpreter-vs-compiler when the kernel is *defined*.

One program owns ``BLOCK_M`` queries of one (batch, head) and walks the key blocks up to its
causal limit, never forming the ``L × L`` matrix. Per query it keeps, for the keys seen so far,
the running maximum ``m`` of the scores, and relative to it

    l = Σ_j e^{s_j − m},   E = Σ_j e^{s_j − m} (s_j − m),
    sink = Σ_{j < sink_k} e^{s_j − m},   span = Σ_{start ≤ j < end} e^{s_j − m},
    acc = Σ_j e^{s_j − m} v_j,   argmax (smallest j with s_j = m).

When a key block raises the maximum to ``m'``, every sum is multiplied by ``α = e^{m − m'}``
and ``E`` also gains the shift: ``E' = α (E + (m − m') l)``. At the end ``lse = m + log l``,
``max_prob = 1 / l``, ``entropy = lse − Σ p s = log l − E / l`` (the shifted form avoids the
cancellation of two terms of size ``|s|``), masses ``/ l``, ``out = acc / l``.

Ties in the argmax go to the smallest key index: ``tl.argmax(..., tie_break_left=True)`` inside a
block, and a later block replaces the running index only if its maximum is strictly larger.

Statistics and the softmax run in float32. For float32 / float64 inputs both dots run in fp32
with ``input_precision="ieee"`` (compiled GPUs would otherwise drop to TF32); for float16 /
bfloat16 inputs (``HALF``) they run on the tensor cores with fp32 accumulation, and the
probabilities are rounded to v's dtype for the second dot, exactly as flash attention does — the
statistics then see the same scores SDPA computes. Tiles are at least 16 wide in
every dimension (``tl.dot``'s minimum when compiled).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dispatch import interpreting

# Tile sizes: the IEEE fp32 dot runs on FMA units and is register hungry. Compiled for sm_90
# (resource usage from cuobjdump, not timed), 32 queries × 16 keys with 4 warps (head dims ≤ 64)
# or 8 warps (up to 256) use ≤ 176 registers without spilling; 64 × 32 spills from d = 64 on.
BLOCK_M = 32  # queries per program
BLOCK_N = 16  # keys per inner step
# half inputs keep q / k / v tiles in 16 bits and feed the tensor cores: flash attention's tiles
HALF_BLOCK_M = 64
HALF_BLOCK_N = 32


@triton.jit
def _attention_stats_kernel(
    q_ptr, k_ptr, v_ptr, c_ptr, span_ptr,
    out_ptr, maxp_ptr, ent_ptr, sink_ptr, spanm_ptr, arg_ptr, lse_ptr,
    H, L, D, DV, sink_k, scale, window, softcap,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_kl, s_kd, s_vb, s_vh, s_vl, s_vd,
    HAS_FORGET: tl.constexpr, HAS_SPAN: tl.constexpr, HALF: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_M), B·H)``. ``c [B·H, L]`` float32 contiguous (FoX), ``span [B, 2]``
    int64; ``out [B, H, L, DV]`` and the statistics ``[B, H, L]`` are contiguous."""
    # positions are int64 so that position · stride cannot overflow for long sequences
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    pid_bh = tl.program_id(1).to(tl.int64)
    b, h = pid_bh // H, pid_bh % H
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < L
    q = tl.load(q_ptr + b * s_qb + h * s_qh + offs_m[:, None] * s_ql + offs_d[None, :] * s_qd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if not HALF:
        q = q.to(tl.float32)
    k_base = k_ptr + b * s_kb + h * s_kh + offs_d[None, :] * s_kd
    v_base = v_ptr + b * s_vb + h * s_vh + offs_dv[None, :] * s_vd
    if HAS_FORGET:
        c_q = tl.load(c_ptr + pid_bh * L + offs_m, mask=row_ok, other=0.0)
    if HAS_SPAN:
        lo = tl.load(span_ptr + 2 * b)
        hi = tl.load(span_ptr + 2 * b + 1)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    e = tl.zeros([BLOCK_M], tl.float32)
    sink = tl.zeros([BLOCK_M], tl.float32)
    spanm = tl.zeros([BLOCK_M], tl.float32)
    arg = tl.zeros([BLOCK_M], tl.int64)  # loop-carried: must keep one dtype when compiled
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    stop = tl.minimum(row0 + BLOCK_M, L)  # causal limit of this query block
    first = 0
    if HAS_WINDOW:  # key blocks wholly before every row's window are skipped
        first = (tl.maximum(row0 - window + 1, 0) // BLOCK_N) * BLOCK_N
    for start_n in range(first, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < L
        kb = tl.load(k_base + offs_n[:, None] * s_kl, mask=col_ok[:, None] & (offs_d[None, :] < D),
                     other=0.0)
        if HALF:  # tensor cores on the half inputs, fp32 accumulation (as flash attention)
            s = tl.dot(q, tl.trans(kb), out_dtype=tl.float32) * scale
        else:
            s = tl.dot(q, tl.trans(kb.to(tl.float32)), input_precision="ieee") * scale
        if HAS_SOFTCAP:  # cap · tanh(s / cap), tanh(x) = 1 − 2 / (exp(2x) + 1) (saturates cleanly)
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        if HAS_FORGET:
            c_k = tl.load(c_ptr + pid_bh * L + offs_n, mask=col_ok, other=0.0)
            s += c_q[:, None] - c_k[None, :]
        valid = (offs_n[None, :] <= offs_m[:, None]) & col_ok[None, :]
        if HAS_WINDOW:
            valid = valid & (offs_m[:, None] - offs_n[None, :] < window)
        s = tl.where(valid, s, float("-inf"))
        block_max = tl.max(s, 1)
        block_arg = tl.argmax(s, 1, tie_break_left=True)
        arg = tl.where(block_max > m, block_arg.to(tl.int64) + start_n, arg)
        m_new = tl.maximum(m, block_max)
        # a row may have no valid key yet (window, or key 0 in a later block): shift by 0, not −inf
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_use)
        # E's shift (m − m_new)·l; before the first key (m = −inf, l = 0) it is 0, not −inf·0
        shift = (tl.where(l > 0, m, m_use) - m_use) * l
        p = tl.exp(s - m_use[:, None])
        centred = tl.where(valid, s - m_use[:, None], 0.0)
        e = alpha * (e + shift) + tl.sum(p * centred, 1)
        l = alpha * l + tl.sum(p, 1)
        sink = alpha * sink + tl.sum(tl.where(offs_n[None, :] < sink_k, p, 0.0), 1)
        if HAS_SPAN:
            inside = (offs_n >= lo) & (offs_n < hi)
            spanm = alpha * spanm + tl.sum(tl.where(inside[None, :], p, 0.0), 1)
        vb = tl.load(v_base + offs_n[:, None] * s_vl, mask=col_ok[:, None] & (offs_dv[None, :] < DV),
                     other=0.0)
        if HALF:  # p rounded to v's dtype for the second dot, as flash attention does
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, out_dtype=tl.float32)
        else:
            acc = acc * alpha[:, None] + tl.dot(p, vb.to(tl.float32), input_precision="ieee")
        m = m_new

    stat = pid_bh * L + offs_m
    l = tl.where(row_ok, l, 1.0)  # rows past L (never stored) may have no key in a window: no 0 / 0
    out_ptrs = out_ptr + (pid_bh * L + offs_m[:, None]) * DV + offs_dv[None, :]
    tl.store(out_ptrs, (acc / l[:, None]).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    log_l = tl.log(l)
    tl.store(lse_ptr + stat, m + log_l, mask=row_ok)
    tl.store(maxp_ptr + stat, 1.0 / l, mask=row_ok)
    tl.store(ent_ptr + stat, log_l - e / l, mask=row_ok)
    tl.store(sink_ptr + stat, sink / l, mask=row_ok)
    tl.store(arg_ptr + stat, arg, mask=row_ok)
    if HAS_SPAN:
        tl.store(spanm_ptr + stat, spanm / l, mask=row_ok)


def _tile(n: int) -> int:
    """Smallest power of two ≥ ``n`` and ≥ 16 (``tl.dot`` needs 16-wide tiles when compiled)."""
    return max(16, triton.next_power_of_2(n))


def attention_stats_triton(
    q: Tensor, k: Tensor, v: Tensor, c: Tensor | None, sink_k: int, spans: Tensor | None,
    scale: float, block_m: int | None = None, block_n: int | None = None, window: int | None = None,
    softcap: float | None = None,
) -> tuple[Tensor, dict[str, Tensor | None]]:
    """Run the kernel on validated inputs: ``q, k [B, H, L, d]``, ``v [B, H, L, d_v]`` (any
    strides and float dtypes), ``c [B, H, L]`` cumulative log forget or None, ``spans [B, 2]``
    int64 or None. Returns ``out [B, H, L, d_v]`` (q's dtype) and the float32 statistics
    ``[B, H, L]`` (argmax int64) keyed as in ``AttentionStats``. ``block_m`` / ``block_n``:
    powers of two ≥ 16 (None: the module's :data:`BLOCK_M` / :data:`BLOCK_N`)."""
    half = q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype and v.dtype == q.dtype
    if q.dtype == torch.bfloat16 and interpreting():
        half = False  # Triton's interpreter gets bf16 dots wrong: upcast there (GPU tests cover it)
    block_m = (HALF_BLOCK_M if half else BLOCK_M) if block_m is None else block_m
    block_n = (HALF_BLOCK_N if half else BLOCK_N) if block_n is None else block_n
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"{name}: expected a power of two ≥ 16, got {size!r}")
    B, H, L, d = q.shape
    dv = v.shape[3]
    out = torch.empty((B, H, L, dv), dtype=q.dtype, device=q.device)
    stats = {name: torch.empty((B, H, L), dtype=torch.float32, device=q.device)
             for name in ("max_prob", "entropy", "sink_mass", "span_mass", "lse")}
    stats["argmax"] = torch.empty((B, H, L), dtype=torch.int64, device=q.device)
    dummy = stats["lse"]  # stands in for absent optional pointers (never read)
    c_arg = dummy if c is None else c.to(torch.float32).contiguous()
    span_arg = dummy if spans is None else spans.to(device=q.device, dtype=torch.int64).contiguous()
    block_d, block_dv = _tile(d), _tile(dv)
    _attention_stats_kernel[(triton.cdiv(L, block_m), B * H)](
        q, k, v, c_arg, span_arg,
        out, stats["max_prob"], stats["entropy"], stats["sink_mass"], stats["span_mass"],
        stats["argmax"], stats["lse"],
        H, L, d, dv, sink_k, scale, window or 0, float(softcap or 1.0), *q.stride(), *k.stride(), *v.stride(),
        HAS_FORGET=c is not None, HAS_SPAN=spans is not None, HALF=half,
        HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=4 if half or max(block_d, block_dv) <= 64 else 8,
    )
    if spans is None:
        stats["span_mass"] = None
    return out, stats
