"""What a model is, in one dict: the config fields that identify it and its parameter count (what
``seqlens hooks`` prints in its header and the dashboard's Model page shows)."""

from __future__ import annotations

from typing import Any


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def arch_summary(model) -> dict[str, Any]:
    """The config fields that say what a model is, and ``parameters``."""
    cfg = model.cfg
    out: dict[str, Any] = {"arch": cfg.arch, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                           "vocab_size": cfg.vocab_size, "n_ctx": cfg.n_ctx, "norm": cfg.norm}
    if cfg.arch == "mamba":
        out.update(d_inner=cfg.d_inner, d_state=cfg.d_state, d_conv=cfg.d_conv,
                   dt_rank=cfg.dt_rank_, pattern_heads=cfg.pattern_heads)
    else:
        out.update(n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads, d_head=cfg.head_dim,
                   positions=cfg.positions, mlp="none" if cfg.attn_only else cfg.mlp,
                   parallel_residual=cfg.parallel_residual)
    out["parameters"] = count_parameters(model)
    return out
