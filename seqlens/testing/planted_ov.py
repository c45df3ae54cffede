"""A hand-built one-layer attention-only byte-level transformer with planted OV circuits (ground
truth for the copying and successor finders).

Residual stream = one-hot token (d_model = V = 256, ``W_E = W_U = I``), RMSNorm weights 1, no
positions, q / k zero (uniform attention; OV analyses ignore the pattern). Each head has
``W_V^h = I`` (d_head = 256) and its OV circuit in ``W_O^h``:

- H0 successor head: ``t → succ(t)`` on the byte ordinal chains "0".."9", "a".."z", "A".."Z",
  closed into cycles (9 → 0, z → a, Z → A) so the matrix is a sum of cyclic permutations: trace
  0, copying score 0; every successor pair wins its argmax, successor score 1.
- H1 copying head: ``W_OV = I`` (copying score +1).
- H2 anti-copying head: ``W_OV = −I`` (copying score −1).
- H3 a random Gaussian OV circuit (seed 0), a distractor.
"""

from __future__ import annotations

import torch

from seqlens.models import ModelConfig, build

V = 256
CHAINS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SUCCESSOR, COPYING, ANTI, RANDOM = 0, 1, 2, 3


def successor_permutation() -> torch.Tensor:
    """``P [V, V]`` with ``P[t, succ(t)] = 1`` on the cycled chains, zero rows elsewhere."""
    P = torch.zeros(V, V)
    for chain in CHAINS:
        ids = [ord(c) for c in chain]
        for a, b in zip(ids, ids[1:] + ids[:1]):
            P[a, b] = 1.0
    return P


def planted_ov_model() -> torch.nn.Module:
    """The model described in the module docstring."""
    cfg = ModelConfig(arch="transformer", vocab_size=V, d_model=V, n_layers=1, n_heads=4, d_head=V,
                      n_ctx=64, positions="none", attn_only=True, norm="rmsnorm")
    model = build(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(V)
    W_O = {SUCCESSOR: successor_permutation(), COPYING: eye, ANTI: -eye,
           RANDOM: torch.randn(V, V, generator=g) / V ** 0.5}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.blocks[0].ln1.weight.fill_(1.0)
        model.ln_final.weight.fill_(1.0)
        model.embed.weight.copy_(eye)
        model.unembed.weight.copy_(eye)
        attn = model.blocks[0].mixer
        for h, w in W_O.items():
            attn.v.weight[h * V:(h + 1) * V] = eye  # W_V^h = I (nn.Linear rows = head outputs)
            attn.o.weight[:, h * V:(h + 1) * V] = w.T  # W_O^h = w in the row convention
    return model.eval()
