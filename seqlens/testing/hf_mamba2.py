"""A tiny random transformers ``Mamba2ForCausalLM`` for parity checks (tests and
``scripts/mamba2_parity.py``), built locally: no network. Needs ``transformers``."""

from __future__ import annotations

import torch


def random_hf_mamba2(groups: int = 2, tied: bool = False, seed: int = 0) -> torch.nn.Module:
    """Mamba-2 with 2 layers, d_model 32, 8 heads of 8, state 8, ``groups`` B/C groups. Norm
    weights, D, conv and dt biases are perturbed and A drawn in [0.5, 4.5): no weight-mapping
    mistake can pass by symmetry (all-ones norms, zero biases)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(vocab_size=101, hidden_size=32, num_hidden_layers=2, state_size=8,
                                    num_heads=8, head_dim=8, n_groups=groups, expand=2, conv_kernel=4,
                                    chunk_size=16, tie_word_embeddings=tied, initializer_range=0.2)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias", "dt_bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
    return hf
