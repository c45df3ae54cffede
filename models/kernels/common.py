"""Helpers shared by the kernel modules and their Triton twins: argument validation, compute
dtype and the result types / return conventions.

Each reference module (``selective_scan``, ``linear_attention``, ``linear_recurrence``) and each
Triton module (``*_triton``) imports these from here, so a Triton module never reaches into the
private names of its reference twin (and the two do not import each other).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GLAResult", "SSDResult", "ScanOutput", "TapPositions", "check_shape", "compute_dtype", "package_scan",
           "validate_scan_inputs", "validate_ssd_inputs", "validate_tap_positions"]

TapPositions = Tensor | Sequence[int]



class GLAResult(NamedTuple):
    """Result of gated linear attention (every backend)."""

    o: Tensor  # [B, T, H, d_v]
    final_state: Tensor  # [B, H, d_k, d_v]
    taps: Tensor | None  # [B, n_taps, H, d_k, d_v], states right after the tapped positions


class ScanOutput(NamedTuple):
    """Result of a scan when the final state and/or tapped states are requested.

    Attributes:
        y: Output ``[batch, d_inner, seq_len]`` in the dtype of ``u``.
        final_state: State after the last step, ``[batch, d_inner, d_state]``,
            or ``None`` if ``return_final_state`` was false.
        taps: States after the steps in ``tap_positions``,
            ``[batch, n_taps, d_inner, d_state]``, or ``None`` if no
            ``tap_positions`` were given.
    """

    y: Tensor
    final_state: Tensor | None
    taps: Tensor | None


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def check_shape(name: str, tensor: Tensor, dims: Sequence[str], expected: Sequence[int]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``tensor`` has shape ``expected``."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape [{', '.join(dims)}] = {list(expected)}, got {list(tensor.shape)}"
        )


def validate_scan_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
) -> tuple[int, int, int, int]:
    """Check all shapes and dtypes; return ``(batch, d_inner, seq_len, d_state)``."""
    if u.dim() != 3:
        raise ValueError(f"u: expected shape [batch, d_inner, seq_len], got {list(u.shape)}")
    if A.dim() != 2:
        raise ValueError(f"A: expected shape [d_inner, d_state], got {list(A.shape)}")
    batch, d_inner, seq_len = u.shape
    d_state = A.shape[1]
    bdl = ("batch", "d_inner", "seq_len")
    check_shape("delta", delta, bdl, (batch, d_inner, seq_len))
    check_shape("A", A, ("d_inner", "d_state"), (d_inner, d_state))
    check_shape("B", B, ("batch", "d_state", "seq_len"), (batch, d_state, seq_len))
    check_shape("C", C, ("batch", "d_state", "seq_len"), (batch, d_state, seq_len))
    if D is not None:
        check_shape("D", D, ("d_inner",), (d_inner,))
    if z is not None:
        check_shape("z", z, bdl, (batch, d_inner, seq_len))
    if delta_bias is not None:
        check_shape("delta_bias", delta_bias, ("d_inner",), (d_inner,))
    if initial_state is not None:
        check_shape(
            "initial_state", initial_state, ("batch", "d_inner", "d_state"), (batch, d_inner, d_state)
        )
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
             "delta_bias": delta_bias, "initial_state": initial_state}
    for name, tensor in named.items():
        if tensor is not None and (not tensor.is_floating_point()):
            raise TypeError(f"{name}: expected a real floating point tensor, got dtype {tensor.dtype}")
    return batch, d_inner, seq_len, d_state


def validate_tap_positions(tap_positions: TapPositions | None, seq_len: int) -> list[int] | None:
    """Turn ``tap_positions`` into a sorted list of unique ints in ``[0, seq_len)``.

    Raises:
        ValueError: if the positions are not 1-D integers, are out of range,
            unsorted or contain duplicates.
    """
    if tap_positions is None:
        return None
    if isinstance(tap_positions, Tensor):
        if tap_positions.dim() != 1:
            raise ValueError(
                f"tap_positions: expected a 1-D tensor, got shape {list(tap_positions.shape)}"
            )
        if tap_positions.is_floating_point() or tap_positions.is_complex() or tap_positions.dtype == torch.bool:
            raise ValueError(f"tap_positions: expected an integer tensor, got dtype {tap_positions.dtype}")
        positions = [int(p) for p in tap_positions.tolist()]
    else:
        positions = []
        for p in tap_positions:
            try:
                if isinstance(p, bool):
                    raise TypeError
                positions.append(operator.index(p))  # ints, numpy ints, 0-d int tensors
            except TypeError:
                raise ValueError(f"tap_positions: expected integers, got {p!r}") from None
    for p in positions:
        if not 0 <= p < seq_len:
            raise ValueError(f"tap_positions: position {p} is out of range [0, {seq_len})")
    for prev, cur in zip(positions, positions[1:]):
        if cur <= prev:
            raise ValueError(
                f"tap_positions: must be sorted and unique, got {prev} followed by {cur}"
            )
    return positions


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise (half inputs are upcast)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def package_scan(
    y: Tensor,
    final_state: Tensor,
    taps: Tensor | None,
    return_final_state: bool,
) -> Tensor | ScanOutput:
    """The selective scan's return convention (see :mod:`.selective_scan`): ``y`` alone, or a
    :class:`ScanOutput` when the final state or taps were requested."""
    if not return_final_state and taps is None:
        return y
    return ScanOutput(y, final_state if return_final_state else None, taps)


# --------------------------------------------------------------------------- #
# Mamba-2 (SSD)
# --------------------------------------------------------------------------- #


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
