"""seqlens.models: the architectures, their config, checkpoint io and Hugging Face conversion."""

from __future__ import annotations

import torch

from .base import ModelState, SeqModel, StreamOutput, hook_active
from .mixer import Mixer, NotApplicableError
from .config import ARCHS, ModelConfig


# arch -> (module, class); modules are imported on first use
ARCH_CLASSES: dict[str, tuple[str, str]] = {
    "transformer": ("transformer", "Transformer"),
    "fox": ("transformer", "Transformer"),
    "mamba": ("mamba", "Mamba"),
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
    return getattr(importlib.import_module(f".{module}", __name__), name)


def from_hf(path_or_model, **kwargs) -> SeqModel:
    """Convert a Hugging Face GPT-2 / GPT-NeoX / Llama / Mamba checkpoint (a local directory or
    a loaded ``transformers`` model) into our implementation; see :mod:`seqlens.models.hf`."""
    from .hf import from_hf as _from_hf

    return _from_hf(path_or_model, **kwargs)


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


__all__ = ["ARCHS", "Mixer", "ModelConfig", "ModelState", "NotApplicableError", "SeqModel", "StreamOutput", "build", "from_hf", "hook_active", "model_class"]
