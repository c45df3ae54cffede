"""The selective scan's specification: :func:`selective_scan_ref`, one Python step per time step
(see :mod:`.selective_scan` for shapes, recurrence and return convention), and the input / output
arithmetic that the chunked path shares with it.

A module of its own so that the Triton twin can fall back to it (degenerate shapes) without
importing the dispatcher that imports the Triton twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import ScanOutput, TapPositions
from .common import compute_dtype as _compute_dtype
from .common import package_scan as _package
from .common import validate_scan_inputs as _validate_inputs
from .common import validate_tap_positions as _validate_tap_positions

__all__ = ["finish_output", "prepare_delta", "selective_scan_ref"]


def prepare_delta(
    delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> Tensor:
    """Apply ``delta_bias`` and the optional softplus to ``delta`` ([B, D, L]), in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def finish_output(
    y: Tensor,
    u: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    out_dtype: torch.dtype,
) -> Tensor:
    """Add the ``D * u`` skip, apply the ``silu(z)`` gate and cast ``y`` to ``out_dtype``.

    ``y``, ``u`` and ``z`` share one shape, either ``[batch, d_inner, seq_len]``
    or ``[batch, seq_len, d_inner]``; ``D`` must already be shaped to
    broadcast against it (``[d_inner, 1]`` or ``[d_inner]`` respectively).
    """
    if D is not None:
        y = torch.addcmul(y, u.to(y.dtype), D.to(y.dtype))
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)



def selective_scan_ref(
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
    """Reference selective scan: one Python iteration per time step.

    This is the specification.  :func:`selective_scan_chunked` must return the
    same ``y``, ``final_state`` and ``taps`` up to float rounding (the tests
    use ``atol=1e-5`` in float32), for every combination of the optional
    arguments.  Arithmetic is done in float32 (float64 if any input is
    float64); gradients flow through it with ordinary autograd.

    Args:
        u: SSM input ``[batch, d_inner, seq_len]``.
        delta: Step sizes ``[batch, d_inner, seq_len]``.
        A: State matrix ``[d_inner, d_state]`` (real).
        B: Input projection ``[batch, d_state, seq_len]``.
        C: Output projection ``[batch, d_state, seq_len]``.
        D: Optional skip ``[d_inner]``: ``y += D * u``.
        z: Optional gate ``[batch, d_inner, seq_len]``: ``y *= silu(z)``.
        delta_bias: Optional ``[d_inner]`` added to ``delta``.
        delta_softplus: Apply softplus to ``delta`` (after ``delta_bias``).
        initial_state: State before step 0, ``[batch, d_inner, d_state]``;
            zeros when ``None``.
        return_final_state: Also return the state after the last step.
        tap_positions: Sorted unique time indices in ``[0, seq_len)`` whose
            states (after processing that step) are returned.

    Returns:
        ``y`` alone, or a :class:`ScanOutput` if ``return_final_state`` or
        ``tap_positions`` is given (see the module docstring).
    """
    batch, d_inner, seq_len, d_state = _validate_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    taps_at = _validate_tap_positions(tap_positions, seq_len)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)

    u_c = u.to(dtype)
    dt_all = prepare_delta(delta, delta_bias, delta_softplus, dtype)
    A_c, B_c, C_c = A.to(dtype), B.to(dtype), C.to(dtype)
    if initial_state is None:
        h = u.new_zeros((batch, d_inner, d_state), dtype=dtype)
    else:
        h = initial_state.to(dtype)

    wanted = set(taps_at or ())
    tapped: list[Tensor] = []
    ys: list[Tensor] = []
    for t in range(seq_len):
        dt = dt_all[:, :, t, None]  # [batch, d_inner, 1]
        h = torch.exp(dt * A_c) * h + dt * B_c[:, None, :, t] * u_c[:, :, t, None]
        ys.append((h * C_c[:, None, :, t]).sum(-1))
        if t in wanted:
            tapped.append(h)

    y = torch.stack(ys, dim=-1) if ys else u_c.new_zeros((batch, d_inner, 0))
    y = finish_output(y, u_c, None if D is None else D[:, None], z, u.dtype)
    taps = None
    if taps_at is not None:
        taps = torch.stack(tapped, dim=1) if tapped else h.new_zeros((batch, 0, d_inner, d_state))
    return _package(y, h, taps, return_final_state)
