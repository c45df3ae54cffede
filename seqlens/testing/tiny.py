"""Tiny random models of every architecture, shared by the tests (``from seqlens.testing.tiny import
make, tokens``): seconds on CPU, no downloads."""

from __future__ import annotations

import torch

from seqlens.models import ModelConfig, build

V = 97

CONFIGS: dict[str, ModelConfig] = {
    # GPT-2 style: learned positions, LayerNorm, GELU, biases, tied embeddings
    "gpt2": ModelConfig(arch="transformer", vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_ctx=128,
                        positions="learned", attn_bias=True, attn_out_bias=True, mlp_bias=True,
                        tied_embeddings=True),
    # Llama style: rotary, RMSNorm, SwiGLU, grouped-query attention, untied
    "llama": ModelConfig(arch="transformer", vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         positions="rotary", norm="rmsnorm", mlp="gated", act="silu", d_mlp=48),
    # GPT-NeoX style: partial rotary, parallel residual
    "neox": ModelConfig(arch="transformer", vocab_size=V, d_model=32, n_layers=2, n_heads=4,
                        positions="rotary", rotary_dim=4, parallel_residual=True, act="gelu",
                        attn_bias=True, attn_out_bias=True, mlp_bias=True),
    "attn_only": ModelConfig(arch="transformer", vocab_size=V, d_model=32, n_layers=2, n_heads=4,
                             positions="none", attn_only=True),
    "fox": ModelConfig(arch="fox", vocab_size=V, d_model=32, n_layers=2, n_heads=4, positions="none",
                       norm="rmsnorm", mlp="gated", act="silu"),
    "mamba": ModelConfig(arch="mamba", vocab_size=V, d_model=32, n_layers=2, d_state=8, expand=2,
                         n_groups=4),
    "mamba2": ModelConfig(arch="mamba2", vocab_size=V, d_model=32, n_layers=2, d_state=8, expand=2, n_heads=4,
                          n_bc_groups=2, norm="rmsnorm", chunk_size=8),
    "gla": ModelConfig(arch="gla", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_key=16, d_value=32,
                       gate_low_rank=8, norm="rmsnorm", mlp="gated", act="silu"),
    # RetNet as the paper: xPos rotation of q and k (positions "rotary"), value dim 2 x key dim
    "retnet": ModelConfig(arch="retnet", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_key=16,
                          d_value=32, norm="rmsnorm", mlp="gated", act="silu", positions="rotary"),
    "mingru": ModelConfig(arch="mingru", vocab_size=V, d_model=32, n_layers=2, d_hidden=48, n_groups=4,
                          norm="rmsnorm", mlp="gated", act="silu"),
    "minlstm": ModelConfig(arch="minlstm", vocab_size=V, d_model=32, n_layers=2, d_hidden=48,
                           n_groups=4, norm="rmsnorm", mlp="gated", act="silu"),
    "lstm": ModelConfig(arch="lstm", vocab_size=V, d_model=32, n_layers=2, d_hidden=32, n_groups=4,
                        norm="rmsnorm", mlp="gated", act="silu"),
}
FOUNDATION = ["gpt2", "llama", "neox", "attn_only", "fox", "mamba"]
RECURRENT = [n for n, c in CONFIGS.items() if c.is_recurrent]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give norms and biases non-trivial values so tests do not pass by symmetry, and make FoX
    forget gates / Mamba Δ vary across positions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or name.endswith(".D"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith("forget.bias"):
                p.add_(2.0)  # forget gates mostly open but not 1
    return model


def make(name: str, seed: int = 0) -> torch.nn.Module:
    return randomize(build(CONFIGS[name], seed=seed), seed)


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))
