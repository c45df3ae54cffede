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
    out.update(model.blocks[0].mixer.summary())  # the mixer's own fields (Mixer.summary)
    out["parameters"] = count_parameters(model)
    return out
