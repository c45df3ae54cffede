"""Gated linear attention: GLA (per-key-dimension gates) and RetNet / simple GLA (one decay per
head), with three backends behind one dispatcher, :func:`gated_linear_attention`.

Per head, with ``q`` scaled by ``scale`` (default ``d_k^-0.5``) and gates given in log space
(``log g ≤ 0``; GLA paper, Yang et al. 2024, §4.1, eq. for ``S_t``)::

    S_t = diag(g_t) S_{t-1} + k_tᵀ v_t          S_t ∈ R^{d_k × d_v}
    o_t = (scale · q_t) S_t

* :func:`gla_recurrent_ref` (``"ref"``): the plain step loop, the specification.
* :func:`gla_chunked` (``"chunked"``): the chunkwise-parallel form (GLA §4.2) in PyTorch.
* ``"triton"``: :mod:`.linear_attention_triton`, the same chunkwise form as Triton kernels with a
  hand-written backward. It is imported only when chosen, because ``triton.jit`` decides between
  compiler and CPU interpreter (``TRITON_INTERPRET=1``) when a kernel is defined.

Layout (flash-linear-attention's): ``q, k, g [B, T, H, d_k]``, ``v [B, T, H, d_v]``, states
``[B, H, d_k, d_v]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import resolve_backend
from .common import GLAResult
from .common import validate_tap_positions as _validate_tap_positions

__all__ = ["GLAResult", "gated_linear_attention", "gla_chunked", "gla_recurrent_ref", "segment_decay",
           "suffix_log_decay"]


# ----------------------------------------------------------------------------- reference


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None,
             scale: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes; return ``q·scale, k, log_g [B, H, T, d_k]``, ``v [B, H, T, d_v]`` and the
    initial state ``[B, H, d_k, d_v]`` in a common dtype of at least float32."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    if k.shape != q.shape or log_g.shape != q.shape or v.shape[:3] != (B, T, H):
        raise ValueError(f"q, k, log_g: expected equal shapes [B, T, H, d_k] and v [B, T, H, d_v], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(log_g.shape)}, {list(v.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, dk, dv):
        raise ValueError(f"initial_state: expected shape {[B, H, dk, dv]}, got {list(initial_state.shape)}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, log_g = (t.to(dtype).transpose(1, 2) for t in (q * scale, k, v, log_g))
    S = q.new_zeros(B, H, dk, dv) if initial_state is None else initial_state.to(dtype)
    return q, k, v, log_g, S


def gla_recurrent_ref(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None = None,
                      scale: float | None = None, taps: Tensor | None = None) -> GLAResult:
    """Plain step loop of ``S_t = diag(g_t) S_{t-1} + k_tᵀ v_t``, ``o_t = (scale·q_t) S_t``.

    ``q, k, log_g [B, T, H, d_k]``, ``v [B, T, H, d_v]``, ``initial_state [B, H, d_k, d_v]`` (zeros
    when None), ``scale`` (default d_k^-0.5), ``taps``: positions whose states to return. The
    reference ``gla_chunked`` must equal (same arguments, plus its chunk size).
    """
    q, k, v, log_g, S = _prepare(q, k, v, log_g, initial_state, scale)
    outs, states = [], []
    for t in range(q.shape[2]):
        S = log_g[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhi,bhij->bhj", q[:, :, t], S))
        states.append(S)
    o = torch.stack(outs, 1)
    tapped = None if taps is None else torch.stack([states[int(p)] for p in taps], 1)
    return GLAResult(o, S, tapped)


# ----------------------------------------------------------------------------- chunked form


def segment_decay(log_g: Tensor) -> Tensor:
    """``D[..., t, s, i] = ∏_{j=s+1..t} g_{j,i} = exp(Σ_{j=s+1..t} log g_{j,i})`` for ``s ≤ t``, 0
    above the diagonal: ``[..., C, C, d_k]`` from ``log_g [..., C, d_k]``.

    Each exponent is summed directly (a suffix sum over the row's ``log g_j, j ≤ t``) rather than
    as a difference ``b_t − b_s`` of prefix sums: all terms are ≤ 0, so there is no cancellation
    and strong decays keep full fp32 precision. The mask goes on before ``exp``.
    """
    C = log_g.shape[-2]
    pos = torch.arange(C, device=log_g.device)
    causal = (pos[None, :] <= pos[:, None])[:, :, None]  # [t, j, 1]
    rows = log_g[..., None, :, :].masked_fill(~causal, 0.0)  # row t keeps log g_j for j ≤ t
    from_s = rows.flip(-2).cumsum(-2).flip(-2)  # Σ_{j ≥ s}
    after_s = F.pad(from_s[..., 1:, :], (0, 0, 0, 1))  # Σ_{j > s}
    return after_s.masked_fill(~causal, float("-inf")).exp()


def suffix_log_decay(log_g: Tensor) -> Tensor:
    """``Σ_{j=s+1..C} log g_j`` for every ``s`` of a chunk ``log_g [..., C, d_k]`` (same shape),
    summed directly for the same reason as :func:`segment_decay`."""
    from_s = log_g.flip(-2).cumsum(-2).flip(-2)
    return F.pad(from_s[..., 1:, :], (0, 0, 0, 1))


def _chunk(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, S: Tensor,
           taps: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk of the chunkwise form (GLA §4.2), inputs ``[B, H, C, d]``, state ``S``.

    With ``b_t = Σ_{j≤t} log g_j`` (chunk-local) and ``D`` from :func:`segment_decay`:
    ``o_t = (q_t ⊙ e^{b_t}) S + Σ_{s≤t} (Σ_i q_{t,i} k_{s,i} D_{t,s,i}) v_s`` and
    ``S' = diag(e^{b_C}) S + Σ_s (k_s ⊙ e^{Σ_{j>s} log g_j})ᵀ v_s``. Every exponent is ≤ 0, so
    nothing overflows however strong the decay. The states after the ``taps`` (chunk-local) reuse
    rows of ``D`` instead of materialising every step's state."""
    b = log_g.cumsum(2)
    decay = segment_decay(log_g)  # [B, H, C, C, d_k]
    A = torch.einsum("bhti,bhsi,bhtsi->bhts", q, k, decay)
    o = (q * b.exp()) @ S + A @ v
    tapped = None
    if taps is not None:
        carried = b[:, :, taps, :, None].exp() * S[:, :, None]
        tapped = carried + torch.einsum("bhnsi,bhsi,bhsj->bhnij", decay[:, :, taps], k, v)
    k_to_end = k * suffix_log_decay(log_g).exp()
    S = b[:, :, -1, :, None].exp() * S + k_to_end.transpose(-1, -2) @ v
    return o, S, tapped


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None = None,
                scale: float | None = None, taps: Tensor | None = None, chunk_size: int = 16) -> GLAResult:
    """Chunkwise-parallel gated linear attention; equals :func:`gla_recurrent_ref` (same
    arguments). Memory is O(B·H·C²·d_k) for the intra-chunk decay, never O(T·d_k·d_v); ``taps``
    (positions in ``[0, T)``) return the states right after those positions. The chunk loop
    carries the state; per token it costs C·d_k (intra-chunk decay) plus d_k·d_v (state), so
    small chunks (16) are fastest in PyTorch."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    q, k, v, log_g, S = _prepare(q, k, v, log_g, initial_state, scale)
    if q.shape[2] == 0:
        return GLAResult(v.transpose(1, 2), S, None)
    outs, tapped = [], []
    for start in range(0, q.shape[2], chunk_size):
        sl = slice(start, start + chunk_size)
        local = None
        if taps is not None:
            local = taps[(taps >= start) & (taps < start + chunk_size)] - start
            local = local if local.numel() else None
        o, S, st = _chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], log_g[:, :, sl], S, local)
        outs.append(o)
        if st is not None:
            tapped.append(st)
    o = torch.cat(outs, 2).transpose(1, 2)
    return GLAResult(o, S, torch.cat(tapped, 2).transpose(1, 2) if tapped else None)



# ----------------------------------------------------------------------------- dispatch


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, decay: Tensor | None,
                  initial_state: Tensor | None) -> None:
    """Raise ``ValueError`` naming the argument unless ``q, k (, g) [B, T, H, d_k]``,
    ``v [B, T, H, d_v]``, ``decay [H]`` and ``initial_state [B, H, d_k, d_v]`` fit together and
    exactly one of ``g`` and ``decay`` is given; ``TypeError`` for non-float tensors."""
    if (g is None) == (decay is None):
        raise ValueError("g, decay: expected exactly one of them (g: per-key log gates [B, T, H, d_k] "
                         "for GLA; decay: per-head log decay [H] for RetNet / simple GLA), got "
                         + ("both" if g is not None else "neither"))
    if q.dim() != 4:
        raise ValueError(f"q: expected shape [B, T, H, d_k], got {list(q.shape)}")
    B, T, H, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k: expected the shape of q {list(q.shape)}, got {list(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v: expected shape [B, T, H, d_v] = [{B}, {T}, {H}, d_v], got {list(v.shape)}")
    if g is not None and g.shape != q.shape:
        raise ValueError(f"g: expected the shape of q {list(q.shape)}, got {list(g.shape)}")
    if decay is not None and decay.shape != (H,):
        raise ValueError(f"decay: expected shape [H] = [{H}], got {list(decay.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, dk, v.shape[-1]):
        raise ValueError(f"initial_state: expected shape [B, H, d_k, d_v] = {[B, H, dk, v.shape[-1]]}, "
                         f"got {list(initial_state.shape)}")
    named = {"q": q, "k": k, "v": v, "g": g, "decay": decay, "initial_state": initial_state}
    for name, t in named.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating point tensor, got dtype {t.dtype}")


def gated_linear_attention(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None,
                           decay: Tensor | None = None, scale: float | None = None,
                           initial_state: Tensor | None = None,
                           tap_positions: Tensor | Sequence[int] | None = None, backend: str = "auto",
                           *, chunk_size: int = 16) -> GLAResult:
    """Gated linear attention ``S_t = diag(g_t) S_{t-1} + k_tᵀ v_t``, ``o_t = (scale·q_t) S_t``.

    ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]``; exactly one of ``g`` (log-space per-key gates
    ``[B, T, H, d_k]``, GLA) and ``decay`` (per-head ``log γ [H]``, RetNet / simple GLA);
    ``scale`` defaults to ``d_k^-0.5``; ``initial_state [B, H, d_k, d_v]`` (zeros when None);
    ``tap_positions``: sorted unique positions in ``[0, T)`` whose states (right after them) are
    returned. ``backend``: ``"auto"`` (Triton on CUDA, else ``"chunked"``), ``"triton"``,
    ``"chunked"`` (:func:`gla_chunked` with ``chunk_size``) or ``"ref"``. Differentiable in every
    tensor argument.

    Returns :class:`GLAResult` ``(o [B, T, H, d_v]`` in q's dtype, ``final_state [B, H, d_k,
    d_v]`` and ``taps [B, n_taps, H, d_k, d_v]`` (None without ``tap_positions``) in float32, or
    float64 for float64 inputs on the PyTorch backends).
    """
    _check_inputs(q, k, v, g, decay, initial_state)
    which = resolve_backend("gated_linear_attention", backend, q)
    B, T, H, dk = q.shape
    positions = _validate_tap_positions(tap_positions, T)
    log_g = g if g is not None else decay.view(1, 1, H, 1).expand(B, T, H, dk)
    if which == "triton":
        from .linear_attention_triton import gla_triton  # defines the kernels: see the module docstring

        res = gla_triton(q, k, v, log_g, initial_state, scale, positions)
    else:
        taps = None if not positions else torch.tensor(positions, device=q.device)
        if which == "ref" and T > 0:
            res = gla_recurrent_ref(q, k, v, log_g, initial_state, scale, taps)
        else:
            res = gla_chunked(q, k, v, log_g, initial_state, scale, taps, chunk_size)
    if positions is not None and not positions:  # an empty list of taps: an empty taps tensor
        res = res._replace(taps=res.final_state.new_zeros(B, 0, *res.final_state.shape[1:]))
    return GLAResult(res.o.to(q.dtype), res.final_state, res.taps)
