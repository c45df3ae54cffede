"""seqlens.models: the architectures, their config, checkpoint io and Hugging Face conversion.

Import layers (no cycles, checked by ``scripts/import_cycles.py``): config/base -> registry ->
checkpoint -> hf -> io -> train -> recipes -> zoo -> :func:`load` here."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import ModelState, SeqModel, StreamOutput, hook_active
from .mixer import Mixer, NotApplicableError
from .config import ARCHS, ModelConfig
from .registry import ARCH_CLASSES, build, model_class  # noqa: F401  (ARCH_CLASSES: re-export)
from seqlens.validate import check_device


def from_hf(path_or_model, **kwargs) -> SeqModel:
    """Convert a Hugging Face GPT-2 / GPT-NeoX / Llama / Mamba checkpoint (a local directory or
    a loaded ``transformers`` model) into our implementation; see :mod:`seqlens.models.hf`."""
    from .hf import from_hf as _from_hf

    return _from_hf(path_or_model, **kwargs)


def load(name_or_dir: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> SeqModel:
    """Open a zoo model by name, or a local directory (seqlens or Hugging Face format), on
    ``device`` with parameters in ``dtype`` (default: as stored; Hugging Face checkpoints: float32)."""
    from . import io, zoo

    if not isinstance(name_or_dir, (str, os.PathLike)) or str(name_or_dir) == "":
        raise TypeError(f"name_or_dir: expected a zoo name or a directory path, got {name_or_dir!r}")
    device = check_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    if isinstance(name_or_dir, str) and name_or_dir in zoo.names():
        model = zoo.load(name_or_dir, device=device)
        return model if dtype is None else model.to(dtype)
    if Path(name_or_dir).exists():
        return io.load_dir(name_or_dir, device=device, dtype=dtype)
    raise FileNotFoundError(f"name_or_dir: {str(name_or_dir)!r} is neither a zoo model ({zoo.names()}) nor an "
                            "existing directory")


__all__ = ["ARCHS", "Mixer", "ModelConfig", "ModelState", "NotApplicableError", "SeqModel", "StreamOutput", "build",
           "from_hf", "hook_active", "load", "model_class"]
