"""Random selective-scan inputs and a labelled closeness check, shared by the scan tests
(test_selective_scan.py: reference vs chunked; test_kernel_selective_scan.py: Triton vs reference)."""

from __future__ import annotations

from typing import Any

import torch


def make_inputs(
    batch: int = 2,
    d_inner: int = 6,
    d_state: int = 4,
    seq_len: int = 13,
    *,
    dtype: torch.dtype = torch.float32,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    with_h0: bool = True,
    softplus: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Random scan inputs (negative A; delta kept positive when no softplus follows), drawn in
    float32 from ``seed`` and cast to ``dtype`` / ``device``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    delta = rand(batch, d_inner, seq_len) * 0.5 - 1.0
    inputs = {
        "u": rand(batch, d_inner, seq_len),
        "delta": delta if softplus else delta.abs() * 0.3,
        "A": -torch.exp(rand(d_inner, d_state)),
        "B": rand(batch, d_state, seq_len),
        "C": rand(batch, d_state, seq_len),
        "D": rand(d_inner) if with_D else None,
        "z": rand(batch, d_inner, seq_len) if with_z else None,
        "delta_bias": rand(d_inner) * 0.1 if with_bias else None,
    }
    if with_h0:  # no key otherwise, so callers can pass their own initial_state
        inputs["initial_state"] = rand(batch, d_inner, d_state)
    return {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in inputs.items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float,
                 name: str = "") -> None:
    """Shape, dtype and value comparison; ``name`` labels the failure."""
    assert actual.shape == expected.shape, name
    assert actual.dtype == expected.dtype, name
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
