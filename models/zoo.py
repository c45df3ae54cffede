"""The model zoo: built-in model organisms.

Until the trained organisms land (issue #3), the zoo holds seeded, *untrained* presets of each
architecture — enough to exercise every interface (CLI, hooks, taps, patterns) with no files.
Each entry says so in ``describe()``.
"""

from __future__ import annotations

import torch

from .base import SeqModel
from .config import ModelConfig

PRESETS: dict[str, tuple[ModelConfig, str]] = {
    "tiny-transformer": (
        ModelConfig(arch="transformer", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="rotary", norm="rmsnorm", mlp="gated", act="silu"),
        "untrained 2-layer Llama-style transformer (rotary, RMSNorm, SwiGLU), byte vocabulary, seed 0"),
    "tiny-gpt2": (
        ModelConfig(arch="transformer", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="learned", norm="layernorm", act="gelu_new", attn_bias=True,
                    attn_out_bias=True, mlp_bias=True, tied_embeddings=True),
        "untrained 2-layer GPT-2-style transformer (learned positions, n_ctx 512), byte vocabulary, seed 0"),
    "tiny-fox": (
        ModelConfig(arch="fox", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="none", norm="rmsnorm", mlp="gated", act="silu"),
        "untrained 2-layer Forgetting Transformer (no positions), byte vocabulary, seed 0"),
    "tiny-mamba": (
        ModelConfig(arch="mamba", vocab_size=256, d_model=64, n_layers=2, n_ctx=512, norm="rmsnorm",
                    d_state=16, expand=2, pattern_heads=8),
        "untrained 2-layer Mamba-1, byte vocabulary, seed 0"),
}


def names() -> list[str]:
    return sorted(PRESETS)


def describe(name: str) -> str:
    return PRESETS[_check(name)][1]


def _check(name: str) -> str:
    if name not in PRESETS:
        raise KeyError(f"name: unknown zoo model {name!r}; available: {names()}")
    return name


def load(name: str, device: str | torch.device | None = None) -> SeqModel:
    from . import build

    model = build(PRESETS[_check(name)][0], seed=0)
    model.tokenizer = None
    return model.to(device) if device is not None else model
