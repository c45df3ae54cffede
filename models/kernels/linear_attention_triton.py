"""Triton kernels for chunked gated linear attention (GLA, Yang et al. 2024, §4.2-4.3), forward
and backward, with states tapped at chosen positions. Twin of ``gla_chunked`` /
``gla_recurrent_ref`` in :mod:`.linear_attention`; reached through ``gated_linear_attention(...,
backend="triton")``. Import this module only when that backend is chosen: ``triton.jit`` picks
compiler or CPU interpreter (``TRITON_INTERPRET=1``) when the kernels below are defined.

Layout: ``q, k [B, T, H, K]``, ``v [B, T, H, V]`` contiguous, in their own dtype (fp32, fp16 or
bf16); every kernel computes in fp32. The sequence is cut into chunks of ``BT = 64`` positions,
each split into ``NC = 4`` sub-chunks of ``BC = 16`` (the GLA paper's secondary chunking).

Log-gate sums (:func:`gate_sums`), chunk- or sub-chunk-local, each summed *directly* from the log
gates (never as a difference of prefix sums, which cancels catastrophically after a very strong
gate, and is NaN after ``-inf``); every exponent below is ``≤ 0``:

    b_t = Σ_{j ≤ t} log g_j   (chunk prefix)     w_s = Σ_{j > s} log g_j   (chunk suffix)
    p_t, u_s: the same within the sub-chunk; G_m = p at the last row of sub-chunk m (its total)

Forward (q̃ = scale·q; S_c = state before chunk c; E_ts = Σ_{j=s+1..t} log g_j):

    states  S_{c+1} = diag(e^{b_last}) S_c + (k ⊙ e^{w})ᵀ v                   (sequential in c)
    scores  A_ts = Σ_i q̃_ti k_si e^{E_ts,i}, s ≤ t in one chunk: for sub-chunks j < i
            E_ts = p_t + (u_s + G_{j+1} + … + G_{i-1}) splits into a q- and a k-factor, one
            tl.dot; on the diagonal a masked [BC, BC, BK] tile of E (a cumulative sum)
    output  o = (q̃ ⊙ e^{b}) S_c + A v
    taps    S_p = diag(e^{b_p}) S_c + Σ_{s ≤ p} (k_s ⊙ e^{E_ps})ᵀ v_s

Backward, with dH_c = ∂L/∂S_{c+1} (gradient of the state after chunk c) and dA_ts = do_t·v_s:

    dH_{c-1} = diag(e^{b_last}) dH_c + (q̃ ⊙ e^{b})ᵀ do + Σ_{taps p ∈ c} diag(e^{b_p}) dS_p
    dq̃ = e^{b} ⊙ (do S_cᵀ) + Σ_s dA_ts k_s ⊙ e^{E_ts}       dv = Aᵀ do + (k ⊙ e^{w}) dH_c
    dk  = e^{w} ⊙ (v dH_cᵀ) + Σ_t dA_ts q̃_t ⊙ e^{E_ts}       (+ the taps' terms)
    d log g_t = Σ_{s < t ≤ t'} P_t's     (P_t's: what source s sends to sink t', decays included)

The gate gradient sums the paths through step t directly (:func:`_gate_grad`) instead of using
the reverse-cumulative-sum identity ``Σ_{t' ≥ t} (q ⊙ dq − k ⊙ dk)_t'`` (the usual choice in
chunked GLA kernels): the identity telescopes O(1) terms into a result that carries g_t, so it
loses relative precision as decays get strong (7% error in d log γ at log γ = −10 and −20 per
step over 64 steps; 2e-7 here, like autograd through the fp32 reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .common import GLAResult

BT = 64  #: chunk length (positions per sequential state step)
BC = 16  #: sub-chunk length (tl.dot needs ≥ 16 per dimension)
#: fp32 tl.dot precision: "ieee" keeps kernels equal to the reference on GPUs (TF32 would round
#: q, k, v and the gates to 10-bit mantissas); the interpreter is always exact
DOT_PRECISION = "ieee"


def _block(n: int, cap: int = 64) -> int:
    """Tile width for a feature dimension of size ``n``: a power of two in ``[16, cap]``."""
    return max(16, min(cap, triton.next_power_of_2(n)))


# ----------------------------------------------------------------------------- shared helpers


@triton.jit
def _load(ptr, rows, cols, n_rows, n_cols, stride):
    """``ptr[rows, cols]`` as fp32 ``[len(rows), len(cols)]`` (row stride ``stride``), zero where
    ``rows ≥ n_rows`` or ``cols ≥ n_cols`` (padding past the sequence end and the feature dim)."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, rows, cols, n_rows, n_cols, stride, x):
    """Write ``x [len(rows), len(cols)]`` to ``ptr[rows, cols]`` in ``ptr``'s dtype, masked like
    :func:`_load`."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * stride + cols[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row(ptr, row, cols, n_cols, stride):
    """One row ``ptr[row, cols]`` as fp32 ``[len(cols)]``."""
    return tl.load(ptr + row * stride + cols, mask=cols < n_cols, other=0.0).to(tl.float32)


@triton.jit
def _sub_total(p, c, m, T, cols, K, HK, BT: tl.constexpr, BC: tl.constexpr):
    """``G_m [BK]``: the summed log gates of sub-chunk ``m`` of chunk ``c`` (the sub-chunk prefix
    ``p`` at its last row, clamped to the sequence end, where padding adds nothing)."""
    last = tl.minimum(c * BT + m * BC + BC, T) - 1
    return _row(p, last, cols, K, HK)


@triton.jit
def _pair_decay(lg, BC: tl.constexpr):
    """``e^{E_ts} = ∏_{j=s+1..t} g_j`` as ``[BC(t), BC(s), BK]`` for one sub-chunk's log gates
    ``lg [BC, BK]``, zero for ``s > t``. ``E`` is a cumulative sum over ``j`` of the gates masked
    to ``j > s``: direct sums of non-positive terms, exact after any decay, ``-inf`` included."""
    r = tl.arange(0, BC)
    BK: tl.constexpr = lg.shape[1]
    after_s = tl.where(r[:, None, None] > r[None, :, None], lg[:, None, :], 0.0)  # [j, s, BK]
    # scan a 2-D view along its first axis (the best-trodden scan lowering on GPUs)
    E = tl.reshape(tl.cumsum(tl.reshape(after_s, (BC, BC * BK)), axis=0), (BC, BC, BK))  # [t, s, BK]
    return tl.where(r[:, None, None] >= r[None, :, None], tl.exp(E), 0.0)


@triton.jit
def _decay_to(lg, rows, pos, cols, K, HK):
    """``e^{E_{pos,s}} = ∏_{j=s+1..pos} g_j`` for chunk rows ``s`` given in *descending* order
    (``[BT, BK]``, zero for ``s > pos``): a cumulative sum, from the chunk end down, of the gates
    loaded one row on (``j = s + 1``) and masked to ``j ≤ pos``. (Descending rows turn the suffix
    sum into a forward scan; ``reverse=True`` scans have had lowering bugs.)"""
    nxt = rows + 1
    mask = (nxt[:, None] <= pos) & (cols[None, :] < K)
    shifted = tl.load(lg + nxt[:, None] * HK + cols[None, :], mask=mask, other=0.0)
    E = tl.cumsum(shifted, axis=0)
    return tl.where(rows[:, None] <= pos, tl.exp(E), 0.0)


# ----------------------------------------------------------------------------- forward kernels


@triton.jit
def _states_fwd_kernel(k, v, b, w, h0, hs, ht, T, NT, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       HAS_H0: tl.constexpr, PREC: tl.constexpr):
    """Walk the chunks of one (batch·head, K-block, V-block): store ``S_c`` into ``hs [B, H, NT,
    K, V]`` and step ``S_{c+1} = diag(e^{b_last}) S_c + (k ⊙ e^{w})ᵀ v`` (GLA §4.2); the last
    state goes to ``ht [B, H, K, V]``."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kc, vc = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)  # row 0 of this head; row stride H·dim
    k, b, w, v = k + row0 * K, b + row0 * K, w + row0 * K, v + row0 * V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S = _load(h0 + i_bh.to(tl.int64) * K * V, kc, vc, K, V, V)
    for c in range(NT):
        _store(hs + (i_bh.to(tl.int64) * NT + c) * K * V, kc, vc, K, V, V, S)
        rows = c * BT + tl.arange(0, BT)
        kw = _load(k, rows, kc, T, K, H * K) * tl.exp(_load(w, rows, kc, T, K, H * K))
        total = _row(b, tl.minimum(c * BT + BT, T) - 1, kc, K, H * K)
        S = S * tl.exp(total)[:, None] + tl.dot(tl.trans(kw), _load(v, rows, vc, T, V, H * V),
                                                input_precision=PREC)
    _store(ht + i_bh.to(tl.int64) * K * V, kc, vc, K, V, V, S)


@triton.jit
def _scores_fwd_kernel(q, k, lg, p, u, A, scale, T, H: tl.constexpr, K: tl.constexpr,
                       BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """One ``[BC, BC]`` block (sub-chunks ``i ≥ j`` of chunk ``c``) of the intra-chunk scores
    ``A_ts = Σ_i q̃_ti k_si e^{E_ts,i}`` into ``A [B, H, T, BT]`` (row ``t``, chunk-local column
    ``s``; blocks above the diagonal stay zero)."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    NC: tl.constexpr = BT // BC
    c, i, j = i_p // (NC * NC), (i_p // NC) % NC, i_p % NC
    if (i < j) | (c * BT + i * BC >= T):
        return
    rows, cols = c * BT + i * BC + tl.arange(0, BC), c * BT + j * BC + tl.arange(0, BC)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64) * K
    acc = tl.zeros([BC, BC], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        kc = kb * BK + tl.arange(0, BK)
        qt = _load(q + row0, rows, kc, T, K, H * K) * scale
        kt = _load(k + row0, cols, kc, T, K, H * K)
        if i > j:  # reference point: the boundary before sub-chunk i
            between = tl.zeros([BK], dtype=tl.float32)
            for m in range(j + 1, i):
                between += _sub_total(p + row0, c, m, T, kc, K, H * K, BT, BC)
            qd = qt * tl.exp(_load(p + row0, rows, kc, T, K, H * K))
            kd = kt * tl.exp(_load(u + row0, cols, kc, T, K, H * K) + between[None, :])
            acc += tl.dot(qd, tl.trans(kd), input_precision=PREC)
        else:
            decay = _pair_decay(_load(lg + row0, rows, kc, T, K, H * K), BC)
            acc += tl.sum(qt[:, None, :] * kt[None, :, :] * decay, axis=2)
    _store(A + i_bh.to(tl.int64) * T * BT, rows, j * BC + tl.arange(0, BC), T, BT, BT, acc)


@triton.jit
def _output_fwd_kernel(q, v, b, hs, A, o, scale, T, NT, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       PREC: tl.constexpr):
    """``o = (q̃ ⊙ e^{b}) S_c + A v`` for one chunk and V-block (GLA §4.2, the chunkwise form)."""
    i_v, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, vc = c * BT + tl.arange(0, BT), i_v * BV + tl.arange(0, BV)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    q, b = q + row0 * K, b + row0 * K
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        kc = kb * BK + tl.arange(0, BK)
        qb = _load(q, rows, kc, T, K, H * K) * scale * tl.exp(_load(b, rows, kc, T, K, H * K))
        S = _load(hs + (i_bh.to(tl.int64) * NT + c) * K * V, kc, vc, K, V, V)
        acc += tl.dot(qb, S, input_precision=PREC)
    At = _load(A + i_bh.to(tl.int64) * T * BT, rows, tl.arange(0, BT), T, BT, BT)
    acc += tl.dot(At, _load(v + row0 * V, rows, vc, T, V, H * V), input_precision=PREC)
    _store(o + row0 * V, rows, vc, T, V, H * V, acc)


@triton.jit
def _taps_fwd_kernel(k, v, lg, b, hs, positions, taps, T, NT, NP, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     PREC: tl.constexpr):
    """The state right after tapped position ``pos`` (one K-block × V-block):
    ``S_pos = diag(e^{b_pos}) S_c + Σ_{s ≤ pos} (k_s ⊙ e^{E_pos,s})ᵀ v_s``, into ``taps [B, NP,
    H, K, V]``."""
    i_kv, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NV = tl.cdiv(V, BV)
    kc, vc = (i_kv // NV) * BK + tl.arange(0, BK), (i_kv % NV) * BV + tl.arange(0, BV)
    pos = tl.load(positions + i_n)
    c = pos // BT
    rows = c * BT + BT - 1 - tl.arange(0, BT)  # descending, for _decay_to
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    k, v, lg, b = k + row0 * K, v + row0 * V, lg + row0 * K, b + row0 * K
    kd = _load(k, rows, kc, T, K, H * K) * _decay_to(lg, rows, pos, kc, K, H * K)
    S = _load(hs + (i_bh.to(tl.int64) * NT + c) * K * V, kc, vc, K, V, V)
    S = S * tl.exp(_row(b, pos, kc, K, H * K))[:, None]
    S += tl.dot(tl.trans(kd), _load(v, rows, vc, T, V, H * V), input_precision=PREC)
    out = ((i_bh // H) * NP + i_n).to(tl.int64) * H + i_bh % H
    _store(taps + out * K * V, kc, vc, K, V, V, S)


# ----------------------------------------------------------------------------- backward kernels


@triton.jit
def _states_bwd_kernel(q, do, b, dht, dtc, dhs, dh0, scale, T, NT, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       HAS_DHT: tl.constexpr, HAS_TAPS: tl.constexpr, PREC: tl.constexpr):
    """Walk the chunks backwards: store ``dH_c`` (gradient of the state after chunk ``c``) into
    ``dhs [B, H, NT, K, V]`` and step ``dH_{c-1} = diag(e^{b_last}) dH_c + (q̃ ⊙ e^{b})ᵀ do``
    (+ the taps' ``dtc`` terms of chunk ``c``); the gradient of the initial state goes to
    ``dh0``."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kc, vc = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    q, b, do = q + row0 * K, b + row0 * K, do + row0 * V
    dH = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dH = _load(dht + i_bh.to(tl.int64) * K * V, kc, vc, K, V, V)
    for i in range(NT):
        c = NT - 1 - i
        state = (i_bh.to(tl.int64) * NT + c) * K * V
        _store(dhs + state, kc, vc, K, V, V, dH)
        rows = c * BT + tl.arange(0, BT)
        qb = _load(q, rows, kc, T, K, H * K) * scale * tl.exp(_load(b, rows, kc, T, K, H * K))
        total = _row(b, tl.minimum(c * BT + BT, T) - 1, kc, K, H * K)
        dH = dH * tl.exp(total)[:, None] + tl.dot(tl.trans(qb), _load(do, rows, vc, T, V, H * V),
                                                  input_precision=PREC)
        if HAS_TAPS:
            dH += _load(dtc + state, kc, vc, K, V, V)
    _store(dh0 + i_bh.to(tl.int64) * K * V, kc, vc, K, V, V, dH)


@triton.jit
def _dscores_kernel(do, v, dA, T, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                    BV: tl.constexpr, PREC: tl.constexpr):
    """``dA_ts = do_t · v_s`` for ``s ≤ t`` in one chunk, into ``dA [B, H, T, BT]``."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    rows, r = c * BT + tl.arange(0, BT), tl.arange(0, BT)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64) * V
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BV)):
        vc = vb * BV + tl.arange(0, BV)
        dob = _load(do + row0, rows, vc, T, V, H * V)
        acc += tl.dot(dob, tl.trans(_load(v + row0, rows, vc, T, V, H * V)), input_precision=PREC)
    acc = tl.where(r[:, None] >= r[None, :], acc, 0.0)
    _store(dA + i_bh.to(tl.int64) * T * BT, rows, r, T, BT, BT, acc)


@triton.jit
def _dv_kernel(k, w, do, A, dhs, dv, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """``dv = Aᵀ do + (k ⊙ e^{w}) dH_c`` for one chunk and V-block."""
    i_v, c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, vc = c * BT + tl.arange(0, BT), i_v * BV + tl.arange(0, BV)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    k, w = k + row0 * K, w + row0 * K
    At = _load(A + i_bh.to(tl.int64) * T * BT, rows, tl.arange(0, BT), T, BT, BT)
    acc = tl.dot(tl.trans(At), _load(do + row0 * V, rows, vc, T, V, H * V), input_precision=PREC)
    for kb in range(0, tl.cdiv(K, BK)):
        kc = kb * BK + tl.arange(0, BK)
        kw = _load(k, rows, kc, T, K, H * K) * tl.exp(_load(w, rows, kc, T, K, H * K))
        dH = _load(dhs + (i_bh.to(tl.int64) * NT + c) * K * V, kc, vc, K, V, V)
        acc += tl.dot(kw, dH, input_precision=PREC)
    _store(dv + row0 * V, rows, vc, T, V, H * V, acc)


@triton.jit
def _dqk_inter(b, w, do, v, hs, dhs, rows, kc, state, T, K: tl.constexpr, V: tl.constexpr,
               HK, HV, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """The chunk-state terms for one sub-chunk: ``e^{b} ⊙ (do S_cᵀ)`` (w.r.t. q̃) and
    ``e^{w} ⊙ (v dH_cᵀ)``, each ``[BC, BK]``."""
    dq = tl.zeros([BC, BK], dtype=tl.float32)
    dk = tl.zeros([BC, BK], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BV)):
        vc = vb * BV + tl.arange(0, BV)
        S = _load(hs + state, kc, vc, K, V, V)
        dH = _load(dhs + state, kc, vc, K, V, V)
        dq += tl.dot(_load(do, rows, vc, T, V, HV), tl.trans(S), input_precision=PREC)
        dk += tl.dot(_load(v, rows, vc, T, V, HV), tl.trans(dH), input_precision=PREC)
    dq *= tl.exp(_load(b, rows, kc, T, K, HK))
    dk *= tl.exp(_load(w, rows, kc, T, K, HK))
    return dq, dk


@triton.jit
def _dq_earlier(k, p, u, dA, c, n, rows, kc, T, K: tl.constexpr, HK, BT: tl.constexpr,
                BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``Σ_{s in sub-chunks j < n} dA_ts k_s ⊙ e^{E_ts}`` for the rows of sub-chunk ``n``, with
    ``E_ts = p_t + u_s + G_{j+1} + … + G_{n-1}`` (nearest sub-chunk first)."""
    acc = tl.zeros([BC, BK], dtype=tl.float32)
    between = tl.zeros([BK], dtype=tl.float32)
    for jj in range(0, n):
        j = n - 1 - jj
        cols = c * BT + j * BC + tl.arange(0, BC)
        kd = _load(k, cols, kc, T, K, HK) * tl.exp(_load(u, cols, kc, T, K, HK) + between[None, :])
        acc += tl.dot(_load(dA, rows, j * BC + tl.arange(0, BC), T, BT, BT), kd, input_precision=PREC)
        between += _sub_total(p, c, j, T, kc, K, HK, BT, BC)
    return acc * tl.exp(_load(p, rows, kc, T, K, HK))


@triton.jit
def _dk_later(q, p, u, dA, scale, c, n, rows, kc, T, K: tl.constexpr, HK, BT: tl.constexpr,
              BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``Σ_{t in sub-chunks m > n} dA_ts q̃_t ⊙ e^{E_ts}`` for the rows ``s`` of sub-chunk ``n``,
    with ``E_ts = p_t + u_s + G_{n+1} + … + G_{m-1}``."""
    NC: tl.constexpr = BT // BC
    acc = tl.zeros([BC, BK], dtype=tl.float32)
    between = tl.zeros([BK], dtype=tl.float32)
    for m in range(n + 1, NC):
        later = c * BT + m * BC + tl.arange(0, BC)
        qd = _load(q, later, kc, T, K, HK) * scale * tl.exp(_load(p, later, kc, T, K, HK))
        dAm = _load(dA, later, n * BC + tl.arange(0, BC), T, BT, BT)  # [t, s]
        acc += tl.exp(between)[None, :] * tl.dot(tl.trans(dAm), qd, input_precision=PREC)
        between += _sub_total(p, c, m, T, kc, K, HK, BT, BC)
    return acc * tl.exp(_load(u, rows, kc, T, K, HK))


@triton.jit
def _diag_terms(qt, kt, dAd, decay, BC: tl.constexpr):
    """The diagonal block of one sub-chunk: ``dq̃_t += Σ_{s ≤ t} dA_ts k_s e^{E_ts}``,
    ``dk_s += Σ_{t ≥ s} dA_ts q̃_t e^{E_ts}`` and the gate term ``Σ_{s < t ≤ t'} P_t's`` (paths
    from a source s to a sink t' through step t, ``P_t's = dA_t's q̃_t' k_s e^{E_t's}``), each
    ``[BC, BK]`` from ``q̃, k [BC, BK]``, ``dA [BC(t), BC(s)]`` and ``decay [BC, BC, BK]``."""
    W = dAd[:, :, None] * decay  # [t', s, BK]
    dq = tl.sum(W * kt[None, :, :], axis=1)
    dk = tl.sum(W * qt[:, None, :], axis=0)
    P = W * qt[:, None, :] * kt[None, :, :]
    r = tl.arange(0, BC)
    through = tl.zeros_like(dq)
    for t in tl.static_range(BC):  # pairs with s < t ≤ t'
        inside = (r[:, None, None] >= t) & (r[None, :, None] < t)
        row = tl.sum(tl.sum(tl.where(inside, P, 0.0), axis=0), axis=0)
        through += tl.where(r[:, None] == t, row[None, :], 0.0)
    return dq, dk, through


@triton.jit
def _pass_through(q, k, p, u, dA, scale, c, n, kc, T, K: tl.constexpr, HK, BT: tl.constexpr,
                  BC: tl.constexpr, PREC: tl.constexpr):
    """``[BK]``: the paths from sources in sub-chunks ``j < n`` to sinks in sub-chunks ``m > n``
    of the chunk, which pass through every step of sub-chunk ``n`` (exponent ``p_t' + u_s +
    G_{j+1} + … + G_{m-1}``)."""
    NC: tl.constexpr = BT // BC
    BK: tl.constexpr = kc.shape[0]
    acc = tl.zeros([BK], dtype=tl.float32)
    for j in range(0, n):
        cols = c * BT + j * BC + tl.arange(0, BC)
        between = tl.zeros([BK], dtype=tl.float32)
        for mid in range(j + 1, n + 1):
            between += _sub_total(p, c, mid, T, kc, K, HK, BT, BC)
        for m in range(n + 1, NC):
            later = c * BT + m * BC + tl.arange(0, BC)
            kd = _load(k, cols, kc, T, K, HK) * tl.exp(_load(u, cols, kc, T, K, HK) + between[None, :])
            qd = _load(q, later, kc, T, K, HK) * scale * tl.exp(_load(p, later, kc, T, K, HK))
            dAmj = _load(dA, later, j * BC + tl.arange(0, BC), T, BT, BT)
            acc += tl.sum(qd * tl.dot(dAmj, kd, input_precision=PREC), axis=0)
            between += _sub_total(p, c, m, T, kc, K, HK, BT, BC)
    return acc


@triton.jit
def _dqk_kernel(q, k, v, do, lg, b, w, p, u, hs, dhs, dA, dq, dk, inside, enter, leave, scale, T, NT,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """``dq`` (w.r.t. the unscaled q) and ``dk`` for one sub-chunk and K-block (the chunk-state
    terms, the earlier / later sub-chunks of the chunk and the diagonal block), into fp32
    ``[B, T, H, K]``; also the gate-gradient pieces of :func:`_gate_grad`: ``inside`` (paths with
    both ends in this chunk, through each step of the sub-chunk), ``enter = q ⊙ dq`` and ``leave
    = k ⊙ dk`` of the chunk-state terms (paths from before / to after the chunk)."""
    i_k, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC: tl.constexpr = BT // BC
    c, n = i_s // NC, i_s % NC
    if c * BT + n * BC >= T:
        return
    rows, kc, r = c * BT + n * BC + tl.arange(0, BC), i_k * BK + tl.arange(0, BK), tl.arange(0, BC)
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    q, k, lg, p, u = q + row0 * K, k + row0 * K, lg + row0 * K, p + row0 * K, u + row0 * K
    dAc = dA + i_bh.to(tl.int64) * T * BT
    dq_in, dk_in = _dqk_inter(b + row0 * K, w + row0 * K, do + row0 * V, v + row0 * V, hs, dhs, rows, kc,
                              (i_bh.to(tl.int64) * NT + c) * K * V, T, K, V, H * K, H * V, BC, BK, BV, PREC)
    dq_before = _dq_earlier(k, p, u, dAc, c, n, rows, kc, T, K, H * K, BT, BC, BK, PREC)
    dk_after = _dk_later(q, p, u, dAc, scale, c, n, rows, kc, T, K, H * K, BT, BC, BK, PREC)
    qt, kt = _load(q, rows, kc, T, K, H * K) * scale, _load(k, rows, kc, T, K, H * K)
    decay = _pair_decay(_load(lg, rows, kc, T, K, H * K), BC)  # [t, s, BK]
    dAd = _load(dAc, rows, n * BC + tl.arange(0, BC), T, BT, BT)
    dq_diag, dk_diag, gate = _diag_terms(qt, kt, dAd, decay, BC)
    # paths from earlier rows of this sub-chunk to later sub-chunks (s < t), and from earlier
    # sub-chunks to rows t' ≥ t of this one: triangular 0/1 matrices sum them directly
    before = (r[None, :] < r[:, None]).to(tl.float32)
    from_t = (r[None, :] >= r[:, None]).to(tl.float32)
    gate += tl.dot(before, kt * dk_after, input_precision=PREC)
    gate += tl.dot(from_t, qt * dq_before, input_precision=PREC)
    gate += _pass_through(q, k, p, u, dAc, scale, c, n, kc, T, K, H * K, BT, BC, PREC)[None, :]
    _store(dq + row0 * K, rows, kc, T, K, H * K, (dq_in + dq_before + dq_diag) * scale)
    _store(dk + row0 * K, rows, kc, T, K, H * K, dk_in + dk_after + dk_diag)
    _store(inside + row0 * K, rows, kc, T, K, H * K, gate)
    _store(enter + row0 * K, rows, kc, T, K, H * K, qt * dq_in)
    _store(leave + row0 * K, rows, kc, T, K, H * K, kt * dk_in)


@triton.jit
def _taps_bwd_kernel(k, v, lg, positions, dtaps, dk_tap, dv_tap, T, NP, H: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """The taps' terms for the chunk rows ``s ≤ pos`` of tap ``i_n``: ``dk_s = e^{E_pos,s} ⊙
    (dS_pos v_s)`` and ``dv_s = (k_s ⊙ e^{E_pos,s}) dS_pos``, into ``dk_tap [B, NP, BT, H, K]``
    and ``dv_tap [B, NP, BT, H, V]`` (chunk-local rows; the caller adds them into dk, dv)."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    pos = tl.load(positions + i_n)
    r = BT - 1 - tl.arange(0, BT)  # chunk-local rows, descending for _decay_to
    rows = (pos // BT) * BT + r
    row0 = ((i_bh // H) * T * H + i_bh % H).to(tl.int64)
    k, lg, v = k + row0 * K, lg + row0 * K, v + row0 * V
    out = ((i_bh // H) * NP + i_n).to(tl.int64) * BT * H + i_bh % H  # row 0 of this tap's block
    dS = dtaps + (((i_bh // H) * NP + i_n).to(tl.int64) * H + i_bh % H) * K * V
    for kb in range(0, tl.cdiv(K, BK)):
        kc = kb * BK + tl.arange(0, BK)
        acc = tl.zeros([BT, BK], dtype=tl.float32)
        for vb in range(0, tl.cdiv(V, BV)):
            vc = vb * BV + tl.arange(0, BV)
            acc += tl.dot(_load(v, rows, vc, T, V, H * V), tl.trans(_load(dS, kc, vc, K, V, V)),
                          input_precision=PREC)
        acc *= _decay_to(lg, rows, pos, kc, K, H * K)
        _store(dk_tap + out * K, r, kc, BT, K, H * K, acc)
    for vb in range(0, tl.cdiv(V, BV)):
        vc = vb * BV + tl.arange(0, BV)
        acc = tl.zeros([BT, BV], dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BK)):
            kc = kb * BK + tl.arange(0, BK)
            kd = _load(k, rows, kc, T, K, H * K) * _decay_to(lg, rows, pos, kc, K, H * K)
            acc += tl.dot(kd, _load(dS, kc, vc, K, V, V), input_precision=PREC)
        _store(dv_tap + out * V, r, vc, BT, V, H * V, acc)


# ----------------------------------------------------------------------------- host side


def gate_sums(log_g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chunk-local log-gate sums ``b, w`` (chunks of BT) and ``p, u`` (sub-chunks of BC), each
    fp32 ``[B, T, H, K]`` from ``log_g [B, T, H, K]``: inclusive prefix sums ``b, p`` and exclusive
    suffix sums ``w_s = Σ_{j>s} log g_j``, ``u`` (summed directly, like ``suffix_log_decay``)."""
    B, T, H, K = log_g.shape
    padded = F.pad(log_g.float(), (0, 0, 0, 0, 0, -T % BT))  # zero log gates: no decay
    out = []
    for size in (BT, BC):
        x = padded.view(B, -1, size, H, K)
        suffix = x.flip(2).cumsum(2).flip(2)
        out += [x.cumsum(2), F.pad(suffix[:, :, 1:], (0, 0, 0, 0, 0, 1))]
    b, w, p, u = (t.reshape(B, -1, H, K)[:, :T].contiguous() for t in out)
    return b, w, p, u


def _meta(q: Tensor, v: Tensor) -> dict:
    """Shape arguments shared by the kernels, and their warps: the IEEE fp32 dots of 64-wide
    tiles spill 5-9 KB per thread with 4 warps when compiled for sm_90 (ptxas -v, offline); 8
    warps hold them in registers (e.g. the dv kernel at K = 64: 255 registers, 184 B stack)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _block(K), _block(V)
    return dict(T=T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=DOT_PRECISION,
                num_warps=8 if max(BK, BV) >= 64 else 4)


def _forward(q: Tensor, k: Tensor, v: Tensor, lg: Tensor, h0: Tensor | None, scale: float,
             positions: Tensor | None) -> tuple[Tensor, ...]:
    """Run the forward kernels on contiguous ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, fp32
    ``lg``; return ``o`` (q's dtype), ``ht [B, H, K, V]``, ``taps [B, NP, H, K, V]`` (or None) and,
    for the backward, the chunk states ``hs [B, H, NT, K, V]`` and the scores ``A [B, H, T, BT]``."""
    m = _meta(q, v)
    B, T, H, K, V = q.shape[0], m["T"], m["H"], m["K"], m["V"]
    NT, NK, NV = triton.cdiv(T, BT), triton.cdiv(K, m["BK"]), triton.cdiv(V, m["BV"])
    lg = lg.contiguous()
    b, w, p, u = gate_sums(lg)
    f32 = dict(device=q.device, dtype=torch.float32)
    hs, ht = torch.empty(B, H, NT, K, V, **f32), torch.empty(B, H, K, V, **f32)
    _states_fwd_kernel[(NK, NV, B * H)](k, v, b, w, h0, hs, ht, NT=NT, HAS_H0=h0 is not None, **m)
    A = torch.zeros(B, H, T, BT, **f32)
    sub = dict(T=T, H=H, K=K, BT=BT, BC=BC, BK=_block(K, 32), PREC=DOT_PRECISION)
    _scores_fwd_kernel[(NT * (BT // BC) ** 2, B * H)](q, k, lg, p, u, A, scale, **sub)
    o = torch.empty(B, T, H, V, device=q.device, dtype=q.dtype)
    _output_fwd_kernel[(NV, NT, B * H)](q, v, b, hs, A, o, scale, NT=NT, **m)
    taps = None
    if positions is not None:
        taps = torch.empty(B, len(positions), H, K, V, **f32)
        _taps_fwd_kernel[(NK * NV, len(positions), B * H)](k, v, lg, b, hs, positions, taps, NT=NT,
                                                          NP=len(positions), **m)
    return o, ht, taps, hs, A


def _tap_state_grads(b: Tensor, dtaps: Tensor, positions: Tensor, NT: int) -> Tensor:
    """The taps' share of the chunk-state gradients: ``Σ_{p ∈ c} diag(e^{b_p}) dS_p`` per chunk,
    ``[B, H, NT, K, V]`` (``b`` chunk prefix sums, ``dtaps [B, NP, H, K, V]``)."""
    B, NP, H, K, V = dtaps.shape
    out = dtaps.new_zeros(B, H, NT, K, V)
    terms = b[:, positions.long()].exp()[..., None] * dtaps  # [B, NP, H, K, V]
    return out.index_add_(2, positions.long() // BT, terms.transpose(1, 2))


def _tap_grads(k: Tensor, v: Tensor, lg: Tensor, positions: Tensor,
               dtaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The taps' terms of ``dk [B, NP, BT, H, K]`` and ``dv [B, NP, BT, H, V]`` over the rows of
    each tap's chunk (zero past the tap), and those rows' positions ``[NP·BT]`` (clamped to
    ``T − 1``, where the terms are zero)."""
    m = _meta(k, v)
    B, NP = dtaps.shape[:2]
    H, K, V, T = m["H"], m["K"], m["V"], m["T"]
    dk_tap = torch.empty(B, NP, BT, H, K, device=k.device, dtype=torch.float32)
    dv_tap = torch.empty(B, NP, BT, H, V, device=k.device, dtype=torch.float32)
    _taps_bwd_kernel[(NP, B * H)](k, v, lg, positions, dtaps, dk_tap, dv_tap, NP=NP, **m)
    rows = (positions.long() // BT * BT)[:, None] + torch.arange(BT, device=k.device)
    return dk_tap, dv_tap, rows.clamp(max=T - 1).flatten()


def _chunks(x: Tensor) -> Tensor:
    """``[B, T, ...]`` as ``[B, NT, BT, ...]``, zero-padded past ``T``."""
    pad = [0, 0] * (x.dim() - 2) + [0, -x.shape[1] % BT]
    return F.pad(x, pad).view(x.shape[0], -1, BT, *x.shape[2:])


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    """``Σ_{j < i} x_j`` along ``dim`` (summed directly, then shifted by one)."""
    shifted = x.cumsum(dim).narrow(dim, 0, x.shape[dim] - 1)
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), shifted], dim)


def _tap_gate_terms(k: Tensor, b: Tensor, hs: Tensor, positions: Tensor, dtaps: Tensor, dk_tap: Tensor,
                    rows: Tensor, enter: Tensor, inside: Tensor) -> None:
    """Add the paths ending in tapped states (in place): those from before the tap's chunk enter
    at the tap (``e^{b_p} Σ_v S_c ⊙ dS_p`` into ``enter``); those from row ``s`` of the chunk pass
    the steps ``s < t ≤ p`` (into ``inside``)."""
    pos = positions.long()
    S_c = hs[:, :, pos // BT].transpose(1, 2)  # [B, NP, H, K, V]
    enter.index_add_(1, pos, b[:, pos].exp() * (S_c * dtaps).sum(-1))
    B, NP = dtaps.shape[:2]
    paths = k.float()[:, rows].view(B, NP, BT, *k.shape[2:]) * dk_tap  # from row s to the tap
    before = _exclusive_cumsum(paths, 2)  # Σ_{s < t}
    upto = torch.arange(BT, device=k.device)[None, :] <= (pos % BT)[:, None]  # t ≤ p
    inside.index_add_(1, rows, (before * upto[None, :, :, None, None]).flatten(1, 2))


def _gate_grad(inside: Tensor, enter: Tensor, leave: Tensor, b: Tensor, hs: Tensor,
               dhs: Tensor) -> Tensor:
    """``d log g [B, T, H, K]`` summed directly over the paths through each step of the recurrence
    (GLA §4.1): ``∂L/∂log g_t = Σ_{s < t ≤ t'} P_t's``, where ``P_t's`` is what source ``s`` (a
    ``k_sᵀ v_s``, or the initial state) sends to sink ``t'`` (an output, a tapped or the final
    state) through key dimension i, decays included. Every term carries step t's decay, so nothing
    cancels however strong the decays (unlike the reverse-cumsum identity ``Σ_{t' ≥ t} (q ⊙ dq −
    k ⊙ dk)_t'``). Pieces: ``inside`` (paths within the chunk, from the kernel), ``enter`` (from
    before the chunk to sink t': ``q ⊙ dq`` of the state term), ``leave`` (from source s to after
    the chunk: ``k ⊙ dk`` of the state term) and the paths passing the whole chunk,
    ``e^{b_last} Σ_v S_c ⊙ dH_c``."""
    T = inside.shape[1]
    from_before = _chunks(enter).flip(2).cumsum(2).flip(2)  # sinks t' ≥ t in the chunk
    to_after = _exclusive_cumsum(_chunks(leave), 2)  # sources s < t in the chunk
    last = (torch.arange(1, hs.shape[2] + 1, device=b.device) * BT).clamp(max=T) - 1
    passing = b[:, last].exp() * (hs * dhs).sum(-1).transpose(1, 2)  # [B, NT, H, K]
    return inside + (from_before + to_after + passing[:, :, None]).flatten(1, 2)[:, :T]


def _state_grads(q: Tensor, do: Tensor, b: Tensor, dht: Tensor | None, dtc: Tensor | None,
                 scale: float) -> tuple[Tensor, Tensor]:
    """``dhs [B, H, NT, K, V]`` (gradients of the states after each chunk) and the initial
    state's gradient ``[B, H, K, V]``, from the backward chunk walk."""
    m = _meta(q, do)
    B, T, H, K, V = q.shape[0], m["T"], m["H"], m["K"], m["V"]
    NT = triton.cdiv(T, BT)
    dhs = torch.empty(B, H, NT, K, V, device=q.device, dtype=torch.float32)
    dh0 = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(K, m["BK"]), triton.cdiv(V, m["BV"]), B * H)
    _states_bwd_kernel[grid](q, do, b, dht, dtc, dhs, dh0, scale, NT=NT, HAS_DHT=dht is not None,
                             HAS_TAPS=dtc is not None, **m)
    return dhs, dh0


def _input_grads(q: Tensor, k: Tensor, v: Tensor, do: Tensor, lg: Tensor, sums: tuple[Tensor, ...],
                 hs: Tensor, dhs: Tensor, A: Tensor, scale: float) -> tuple[Tensor, ...]:
    """fp32 ``dq, dk [B, T, H, K]`` and ``dv [B, T, H, V]`` (without the taps' terms) from the
    chunk states, their gradients and the saved scores, and the gate-gradient pieces ``inside,
    enter, leave [B, T, H, K]`` of :func:`_gate_grad`."""
    m = _meta(q, v)
    B, T, H, K, V = q.shape[0], m["T"], m["H"], m["K"], m["V"]
    NT, NV = triton.cdiv(T, BT), triton.cdiv(V, m["BV"])
    b, w, p, u = sums
    f32 = dict(device=q.device, dtype=torch.float32)
    dA = torch.empty(B, H, T, BT, **f32)
    _dscores_kernel[(NT, B * H)](do, v, dA, T=T, H=H, V=V, BT=BT, BV=m["BV"], PREC=DOT_PRECISION)
    dv = torch.empty(B, T, H, V, **f32)
    _dv_kernel[(NV, NT, B * H)](k, w, do, A, dhs, dv, NT=NT, **m)
    dq, dk, inside, enter, leave = (torch.empty(B, T, H, K, **f32) for _ in range(5))
    m["BK"] = _block(K, 32)  # the [BC, BC, BK] tiles stay small
    _dqk_kernel[(triton.cdiv(K, m["BK"]), NT * (BT // BC), B * H)](
        q, k, v, do, lg, b, w, p, u, hs, dhs, dA, dq, dk, inside, enter, leave, scale, NT=NT, BC=BC, **m)
    return dq, dk, dv, inside, enter, leave


def _backward(saved: tuple[Tensor, ...], scale: float, do: Tensor | None, dht: Tensor | None,
              dtaps: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """fp32 ``dq, dk, dv, d log g`` and ``d initial_state`` (None without one) from the tensors
    :class:`_ChunkGLA` saved and the output gradients (None where unused)."""
    q, k, v, lg, h0, positions, hs, A = saved
    sums = gate_sums(lg)
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dht = None if dht is None else dht.float().contiguous()
    dtaps = None if dtaps is None or positions is None else dtaps.float().contiguous()
    dtc = None if dtaps is None else _tap_state_grads(sums[0], dtaps, positions, hs.shape[2])
    dhs, dh0 = _state_grads(q, do, sums[0], dht, dtc, scale)
    dq, dk, dv, inside, enter, leave = _input_grads(q, k, v, do, lg, sums, hs, dhs, A, scale)
    if dtaps is not None:
        dk_tap, dv_tap, rows = _tap_grads(k, v, lg, positions, dtaps)
        dk.index_add_(1, rows, dk_tap.flatten(1, 2))
        dv.index_add_(1, rows, dv_tap.flatten(1, 2))
        _tap_gate_terms(k, sums[0], hs, positions, dtaps, dk_tap, rows, enter, inside)
    dlg = _gate_grad(inside, enter, leave, sums[0], hs, dhs)
    return dq, dk, dv, dlg, None if h0 is None else dh0


class _ChunkGLA(torch.autograd.Function):
    """The chunked kernels with their hand-written backward; inputs as :func:`_forward`'s
    (``lg`` fp32, ``positions`` int32 or None). Saves the chunk states and scores; not twice
    differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, lg, h0, scale, positions):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        lg = lg.contiguous()
        o, ht, taps, hs, A = _forward(q, k, v, lg, h0, scale, positions)
        ctx.save_for_backward(q, k, v, lg, h0, positions, hs, A)
        ctx.scale = scale
        return o, ht, taps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dht, dtaps):  # type: ignore[override]
        q, k, v = ctx.saved_tensors[:3]
        dq, dk, dv, dlg, dh0 = _backward(ctx.saved_tensors, ctx.scale, do, dht, dtaps)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dlg, dh0, None, None


def gla_triton(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None = None,
               scale: float | None = None, tap_positions: list[int] | None = None) -> GLAResult:
    """Chunked gated linear attention in Triton; equals ``gla_recurrent_ref`` (same arguments,
    with ``tap_positions`` a validated sorted list of positions in ``[0, T)``). ``log_g`` may be a
    stride-0 expansion of a per-head decay (its gradient then sums through the expansion).
    Returns ``o`` in q's dtype and fp32 states; differentiable in every tensor argument."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    if T == 0:
        final = q.new_zeros(B, H, K, V, dtype=torch.float32) if h0 is None else h0
        taps = None if tap_positions is None else final.new_zeros(B, 0, H, K, V)
        return GLAResult(q.new_empty(B, 0, H, V), final, taps)
    pos = None if not tap_positions else torch.tensor(tap_positions, dtype=torch.int32, device=q.device)
    args = (q.contiguous(), k.contiguous(), v.contiguous(), log_g.float(), h0, scale, pos)
    needs_grad = any(t is not None and t.requires_grad for t in (q, k, v, log_g, initial_state))
    if torch.is_grad_enabled() and needs_grad:
        o, ht, taps = _ChunkGLA.apply(*args)
    else:
        o, ht, taps = _forward(*args)[:3]
    return GLAResult(o, ht, taps)
