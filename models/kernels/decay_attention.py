"""Implicit attention of a diagonal-decay linear recurrence (docs/methods.md §7), without the
``[..., L, L, n]`` decay tensor.

For a state ``h_t = exp(ΔS_t) ⊙ h_{t−1} + k_t v_t`` read by ``q_t`` (Mamba-1: ``q = C``,
``k = Δ_s B_s``, per channel d; GLA: ``q, k`` per head, per key dimension), with the cumulative
log decay ``S[..., t, n] = Σ_{j≤t} log decay_j`` (non-increasing along t),

    α[..., t, s] = Σ_n q[..., t, n] k[..., s, n] exp(S[..., t, n] − S[..., s, n])   (s ≤ t, else 0).

* :func:`decay_attention_direct` -- the reference twin: exp of every ``(t, s, n)`` entry,
  O(L² n) memory and exps (what Mamba's ``pattern`` did before; 6.7 s a layer on text-mamba).
* :func:`decay_attention_chunked` -- the SSD chunk trick (Dao & Gu 2024, Mamba-2 §6): with
  chunks of ``chunk`` positions, ``a_j`` the first position of t's chunk and ``b_i`` the last of
  s's, for chunks ``i < j``

      exp(S_t − S_s) = exp(S_t − S_{a_j}) · exp(S_{a_j} − S_{b_i}) · exp(S_{b_i} − S_s),

  every factor ≤ 1 (no overflow; a factor that underflows to 0 means the true value is smaller
  still), so the off-diagonal chunk pairs are batched ``[chunk, n] @ [n, chunk]`` matmuls; inside
  a chunk, ``exp(S_t − S_s) = exp(S_t − S_a) · exp(S_a − S_s)`` in float64 (the second factor ≥ 1
  but at most e^SAFE_SPAN; a chunk that decays more is split again): O(L² + L·L/chunk·n) memory.

``S`` should be float64 (a prefix sum: the differences of long float32 prefix sums lose digits);
``q, k`` are float32 or float64 and may be broadcast views. Output in ``q``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

DEFAULT_CHUNK = 64
SAFE_SPAN = 600.0  # nats of decay inside one chunk that the float64 two-factor split may span


def _check(q: Tensor, k: Tensor, S: Tensor) -> None:
    if not (q.shape[-2:] == k.shape[-2:] == S.shape[-2:]):
        raise ValueError(f"q, k, S: expected the same trailing [L, n], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(S.shape)}")


def decay_attention_direct(q: Tensor, k: Tensor, S: Tensor) -> Tensor:
    """Reference: exp of the full ``[..., t, s, n]`` segment sums, masked above the diagonal."""
    _check(q, k, S)
    L = S.shape[-2]
    seg = S[..., :, None, :] - S[..., None, :, :]  # [..., t, s, n]
    causal = torch.ones(L, L, dtype=torch.bool, device=S.device).tril()[:, :, None]
    decay = seg.masked_fill(~causal, float("-inf")).exp().to(q.dtype)
    return torch.einsum("...tn,...tsn,...sn->...ts", q, decay, k.to(q.dtype))


def _pad(x: Tensor, L_pad: int, mode: str) -> Tensor:
    """Pad ``x [..., L, n]`` to ``L_pad`` positions: zeros for q / k (padded rows and columns
    are 0 and cropped), the last value for S (no decay over padding: every factor stays ≤ 1)."""
    extra = L_pad - x.shape[-2]
    if extra == 0:
        return x
    if mode == "zero":
        return F.pad(x, (0, 0, 0, extra))
    return torch.cat([x, x[..., -1:, :].expand(*x.shape[:-2], extra, x.shape[-1])], dim=-2)


def _diagonal_blocks(q: Tensor, k: Tensor, S: Tensor) -> Tensor:
    """Inside each chunk ``[..., c, Q, n] -> [..., c, Q(t), Q(s)]``: ``exp(S_t − S_s) = exp(S_t −
    S_a) · exp(S_a − S_s)`` (``a`` the chunk's first position) makes it one ``[Q, n] @ [n, Q]``
    matmul, in float64 so that the second factor (≥ 1) cannot overflow while the chunk's decay spans
    at most ``SAFE_SPAN`` nats (e^600 ≪ float64's max); chunks spanning more are split again
    (recursively, halving the chunk; one position spans 0)."""
    Q = S.shape[-2]
    first = S[..., :1, :]
    qa = q.double() * (S - first).exp()
    kb = k.double() * (first - S).clamp(max=SAFE_SPAN).exp()
    out = (qa @ kb.transpose(-1, -2)).tril().to(q.dtype)
    unsafe = (first[..., 0, :] - S[..., -1, :]).amax(-1) > SAFE_SPAN  # [..., c]
    if unsafe.any():
        out[unsafe] = decay_attention_chunked(q[unsafe], k[unsafe], S[unsafe], chunk=max(1, Q // 2))
    return out


def _off_diagonal_blocks(q: Tensor, k: Tensor, S: Tensor, jj: Tensor, ii: Tensor) -> Tensor:
    """Chunk pairs ``(j, i) = (jj[p], ii[p])`` with ``i < j`` by the three-factor split:
    ``[..., c, Q, n] -> [..., P, Q(t), Q(s)]``."""
    first, last = S[..., :1, :], S[..., -1:, :]  # S at a_j and b_i, [..., c, 1, n]
    qa = q * (S - first).to(q.dtype).exp()  # exp(S_t − S_{a_j}) ≤ 1
    kb = k * (last - S).to(q.dtype).exp()  # exp(S_{b_i} − S_s) ≤ 1
    M = (first[..., jj, :, :] - last[..., ii, :, :]).to(q.dtype).exp()  # exp(S_{a_j} − S_{b_i}) ≤ 1, [..., P, 1, n]
    return (qa[..., jj, :, :] * M) @ kb[..., ii, :, :].transpose(-1, -2)


def decay_attention_chunked(q: Tensor, k: Tensor, S: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """``α [..., L, L]`` by the chunk split of the module docstring (equal to
    :func:`decay_attention_direct` up to rounding)."""
    _check(q, k, S)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive integer, got {chunk!r}")
    *batch, L, n = S.shape
    Q = min(chunk, L)
    c = -(-L // Q)
    k = k.to(q.dtype)
    shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], S.shape[:-2]), c, Q, n)
    qc, kc, Sc = (_pad(x, c * Q, m).expand(*shape[:-3], c * Q, n).reshape(shape)
                  for x, m in ((q, "zero"), (k, "zero"), (S, "last")))
    blocks = qc.new_zeros(*shape[:-3], c, c, Q, Q)  # [..., j, i, t, s]; pairs i > j stay 0
    jj, ii = torch.tril_indices(c, c, -1, device=S.device)
    if len(jj):
        blocks[..., jj, ii, :, :] = _off_diagonal_blocks(qc, kc, Sc, jj, ii)
    idx = torch.arange(c, device=S.device)
    blocks[..., idx, idx, :, :] = _diagonal_blocks(qc, kc, Sc)
    out = blocks.transpose(-3, -2).reshape(*shape[:-3], c * Q, c * Q)
    return out[..., :L, :L]
