"""Checkpoint primitives shared by the loaders (:mod:`.io`, :mod:`.hf`): the error type, reading
``config.json`` and safetensors files, and copying a state dict into a model with shape checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import CONFIG_FILE, SeqModel


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing, corrupt or mismatched)."""


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"path: {directory} has no {CONFIG_FILE}; expected a seqlens or Hugging Face "
                              "checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"path: {path} is not valid JSON ({e})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning truncation / corruption into a clear CheckpointError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise CheckpointError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_state_into(model: SeqModel, state: dict[str, torch.Tensor], source: Path) -> SeqModel:
    """Copy ``state`` into ``model`` requiring identical names and shapes (tied weights may be
    stored once)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (k == "unembed.weight" and model.cfg.tied_embeddings)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"path: {source} does not match the config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"path: {source}: weight {k!r} has shape {list(v.shape)} but the config "
                                  f"implies {list(own[k].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return model
