"""Shared ground truth for the SAE tests: a known sparse dictionary and SAEs with random weights."""

from __future__ import annotations

import torch

from seqlens.probes import sae as S


def sparse_data(n: int = 2048, d: int = 16, m: int = 24, k: int = 2,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X [n, d], D [m, d])``: each row is a sum of ``k`` unit atoms of ``D`` with weights in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D = D / D.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)])
    c = torch.zeros(n, m).scatter(1, idx, torch.rand(n, k, generator=g) + 0.5)
    return c @ D, D


def random_sae(arch: str, d_in: int = 12, d_sae: int = 40, seed: int = 0, **cfg) -> S.SAE:
    """An SAE of ``arch`` with seeded random weights (thresholds in [0, 0.5), MP atoms unit-norm)."""
    defaults = {"topk": {"k": 5}, "matching_pursuit": {"max_iterations": 6}}.get(arch, {})
    s = S.make_sae(S.SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, **{**defaults, **cfg}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if arch == "jumprelu":
            s.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
        if arch == "matching_pursuit":
            s.W_dec.div_(s.W_dec.norm(dim=-1, keepdim=True))
    return s


def best_match(W_dec: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """For every true atom, the largest cosine with a learned decoder row."""
    W = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return (D @ W.T).max(dim=1).values
