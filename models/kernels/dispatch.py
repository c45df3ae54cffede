"""Backend choice shared by every kernel dispatcher.

Each operation (``selective_scan``, ``gated_linear_attention``, ``linear_recurrence``,
``attention_stats``) has a plain PyTorch reference (``"ref"``), faster PyTorch paths
(``"chunked"``; ``"loop"`` for the linear recurrence), and a Triton kernel (``"triton"``). ``"auto"`` picks Triton for CUDA tensors when
Triton imports, and the fastest PyTorch path otherwise. Analyses record the backend that ran
(:func:`resolve_backend` is deterministic, so they can ask before or after the call).

``TRITON_INTERPRET=1`` runs the Triton kernels on CPU tensors through Triton's interpreter (how CI
tests them); ``backend="triton"`` with CPU tensors is allowed only then.
"""

from __future__ import annotations

import functools
import os

from torch import Tensor

#: backends each operation implements besides "auto", fastest PyTorch path first
BACKENDS: dict[str, tuple[str, ...]] = {
    "selective_scan": ("triton", "chunked", "ref"),
    "ssd": ("triton", "chunked", "ref"),
    "gated_linear_attention": ("triton", "chunked", "ref"),
    "linear_recurrence": ("triton", "loop", "chunked", "ref"),
    "attention_stats": ("triton", "chunked", "ref"),
}


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` works (it is a Linux-only dependency)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends(cuda: bool) -> dict[str, list[str]]:
    """Backends each operation can run here: Triton only with CUDA (or under the interpreter)."""
    triton_ok = triton_available() and (cuda or interpreting())
    return {op: [b for b in known if b != "triton" or triton_ok] for op, known in BACKENDS.items()}


def resolve_backend(op: str, backend: str, tensor: Tensor) -> str:
    """The backend ``op`` runs with for inputs on ``tensor``'s device.

    Raises ``ValueError`` naming ``backend`` for an unknown choice, and ``RuntimeError`` when
    ``"triton"`` is asked for but cannot run (no Triton, or CPU tensors without the interpreter).
    """
    if op not in BACKENDS:
        raise ValueError(f"op: expected one of {sorted(BACKENDS)}, got {op!r}")
    known = BACKENDS[op]
    if backend != "auto" and backend not in known:
        raise ValueError(f"backend: expected 'auto' or one of {list(known)} for {op}, got {backend!r}")
    if backend == "auto":
        if tensor.is_cuda and triton_available():
            return "triton"
        return known[1]
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"backend='triton' for {op}: Triton is not installed on this platform")
        if not tensor.is_cuda and not interpreting():
            raise RuntimeError(f"backend='triton' for {op}: inputs are on {tensor.device}; Triton kernels "
                               "need CUDA tensors (or TRITON_INTERPRET=1 to run them on CPU)")
    return backend
