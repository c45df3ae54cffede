"""Building blocks of the explicit, module-by-module LRP references in test_lrp.py and
test_lrp_mamba2.py (relevance messages, no autograd)."""

from __future__ import annotations

import torch


def rms(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """RMSNorm in x's dtype (the references run in float64)."""
    return norm.weight.to(x.dtype) * x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()


def linear_back(x: torch.Tensor, Wm: torch.Tensor, R_out: torch.Tensor) -> torch.Tensor:
    """LRP-0 through y = x Wmᵀ: R_x_j = x_j Σ_i W_ij R_i / y_i."""
    return x * ((R_out / (x @ Wm.T)) @ Wm)
