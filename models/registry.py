"""The architecture registry: which class implements each ``arch``, and :func:`build`.

Lives apart from the package ``__init__`` so that the loaders (io, hf, zoo, train) can build models
without importing the package that re-exports them (no import cycle).
"""

from __future__ import annotations

import torch

from .base import SeqModel
from .config import ARCHS, ModelConfig

# arch -> (module, class); modules are imported on first use
ARCH_CLASSES: dict[str, tuple[str, str]] = {
    "transformer": ("transformer", "Transformer"),
    "fox": ("transformer", "Transformer"),
    "mamba": ("mamba", "Mamba"),
    "mamba2": ("mamba2", "Mamba2"),
    "gla": ("gla", "GLA"),
    "retnet": ("gla", "GLA"),
    "mingru": ("mingru", "MinGRU"),
    "minlstm": ("mingru", "MinGRU"),
    "lstm": ("lstm", "LSTM"),
}


def model_class(arch: str) -> type[SeqModel]:
    """The `SeqModel` subclass implementing ``arch``."""
    import importlib

    if arch not in ARCH_CLASSES:
        raise ValueError(f"arch: unsupported architecture {arch!r}; supported: {list(ARCHS)}")
    module, name = ARCH_CLASSES[arch]
    return getattr(importlib.import_module(f".{module}", __package__), name)


def build(cfg: ModelConfig, seed: int | None = 0) -> SeqModel:
    """Instantiate the model described by ``cfg`` with random weights drawn from ``seed``
    (``None``: use the global RNG). Returns the model in eval mode."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
    cls = model_class(cfg.arch)
    if seed is None:
        return cls(cfg).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(cfg).eval()
