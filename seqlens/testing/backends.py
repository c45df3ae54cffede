"""Kernel backends as pytest parameters with readable ids: ``"ref"``, ``"chunked"``, ``"loop"``,
and ``"triton-interpret"`` (Triton's CPU interpreter, ``TRITON_INTERPRET=1``) or ``"triton-cuda"``
(compiled, on a GPU) for ``"triton"``; Triton cases are skipped where Triton is not installed.
Needs pytest (a test-only helper)."""

from __future__ import annotations

import pytest
import torch

from seqlens.models.kernels.dispatch import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def backend_id(name: str) -> str:
    """The test id of backend ``name`` (says where Triton runs)."""
    if name != "triton":
        return name
    return "triton-cuda" if torch.cuda.is_available() else "triton-interpret"


def backends(*names: str) -> list:
    """``pytest.param`` per backend name, with :func:`backend_id` ids and the Triton skip mark."""
    return [pytest.param(n, id=backend_id(n), marks=[needs_triton] if n == "triton" else []) for n in names]
