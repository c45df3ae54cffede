"""Mamba-2's state-space-dual scan (SSD; Dao & Gu 2024, "Transformers are SSMs"), with three
backends behind one dispatcher, :func:`ssd_scan`.

Per head ``h`` (scalar decay ``A_h < 0``) and state ``S_t ∈ R^{P × N}``::

    S_t = exp(Δ_t A_h) S_{t-1} + (Δ_t x_t) B_tᵀ          x_t ∈ R^P,  B_t, C_t ∈ R^N
    y_t = S_t C_t

B and C are shared by the ``H / G`` heads of each of ``G`` groups (transformers' ``n_groups``).
The ``D`` skip and the gate lie outside (in the mixer).

* :func:`ssd_ref` (``"ref"``, in :mod:`.ssd_ref`): the plain step loop, the specification.
* :func:`ssd_chunked` (``"chunked"``, in :mod:`.ssd_ref`): the chunked SSD form (paper §6; transformers'
  ``torch_forward``): inside a chunk of ``Q`` positions an attention-like matrix
  ``(C_t·B_s) exp(Σ_{k=s+1..t} Δ_k A)`` applied to ``Δ_s x_s``, across chunks the state.
* ``"triton"``: :mod:`.ssd_triton` (imported only when chosen; see :mod:`.dispatch`).

Layout: ``x [Bt, L, H, P]``, ``dt [Bt, L, H]`` (Δ after softplus), ``A [H]``, ``B, C [Bt, L,
G, N]``, states ``[Bt, H, P, N]`` (transformers' layout). Arithmetic in float32 (float64 for
float64 inputs); every backend returns an :class:`SSDResult`.
"""

from __future__ import annotations

from torch import Tensor

from .common import SSDResult, TapPositions, validate_ssd_inputs
from .dispatch import resolve_backend
from .ssd_ref import ssd_chunked, ssd_ref

__all__ = ["SSDResult", "ssd_chunked", "ssd_ref", "ssd_scan", "validate_ssd_inputs"]


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
