"""Compute kernels: one dispatch function per operation, each with a plain PyTorch reference
beside it and a Triton kernel for CUDA (see :mod:`.dispatch` for how backends are chosen).

- :func:`selective_scan` — Mamba-1 selective scan (mamba-ssm's layout), state taps;
- :func:`gated_linear_attention` — chunked GLA / RetNet (flash-linear-attention's layout), taps;
- :func:`ssd_scan` — Mamba-2's state-space-dual scan (per-head scalar decay), state taps;
- :func:`linear_recurrence` — ``h_t = a_t ⊙ h_{t−1} + b_t`` (minGRU / minLSTM / HGRN), taps;
- :func:`attention_stats` — softmax / forgetting attention output plus per-row statistics
  (max probability, entropy, sink and span mass, argmax key) without the L×L matrix.

The Triton modules are imported only when a Triton backend runs (``triton.jit`` fixes
interpreter vs compiler when a kernel is defined).

Note: the dispatch functions share their modules' names, so ``kernels.attention_stats`` is the
function; reach a module with ``from seqlens.models.kernels.attention_stats import ...`` or
``importlib.import_module``.
"""

from .attention_stats import AttentionStats, attention_stats, attention_stats_chunked, attention_stats_ref
from .dispatch import BACKENDS, available_backends, resolve_backend, triton_available
from .linear_attention import GLAResult, gated_linear_attention, gla_chunked, gla_recurrent_ref
from .linear_recurrence import (
    RecurrenceOutput,
    linear_recurrence,
    linear_recurrence_chunked,
    linear_recurrence_ref,
)
from .ssd import SSDResult, ssd_chunked, ssd_ref, ssd_scan
from .selective_scan import (
    DEFAULT_CHUNK_SIZE,
    ScanOutput,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "AttentionStats",
    "GLAResult",
    "RecurrenceOutput",
    "SSDResult",
    "ScanOutput",
    "attention_stats",
    "attention_stats_chunked",
    "attention_stats_ref",
    "available_backends",
    "gated_linear_attention",
    "gla_chunked",
    "gla_recurrent_ref",
    "linear_recurrence",
    "linear_recurrence_chunked",
    "linear_recurrence_ref",
    "resolve_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "ssd_chunked",
    "ssd_ref",
    "ssd_scan",
    "triton_available",
]
