"""Compute kernels for seqlens models (currently the Mamba-1 selective scan)."""

from .selective_scan import (
    DEFAULT_CHUNK_SIZE,
    ScanOutput,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ScanOutput",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
