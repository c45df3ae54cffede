"""Random inputs for elementwise linear recurrences (minGRU-shaped), shared by the scan and mixer tests."""

from __future__ import annotations

import torch

from seqlens.models.mingru import positive_activation


def random_recurrence(L: int, dtype: torch.dtype, seed: int = 0, D: int = 6, B: int = 2):
    """Gates a = 1 − z, writes b = z ⊙ h̃ as minGRU makes them, and a nonzero initial state."""
    g = torch.Generator().manual_seed(seed)
    z = torch.sigmoid(2 * torch.randn(B, L, D, generator=g, dtype=torch.float64))
    cand = positive_activation(torch.randn(B, L, D, generator=g, dtype=torch.float64))
    h0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    return (1 - z).to(dtype), (z * cand).to(dtype), h0.to(dtype)
