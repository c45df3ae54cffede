"""Open a model by zoo name or local directory (ours or Hugging Face format). No network."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .config import ModelConfig


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


def load_dir(path: str | os.PathLike, device: str | torch.device | None = None) -> SeqModel:
    """Load a seqlens checkpoint (``config.json`` with a ``"seqlens"`` key + ``model.safetensors``)
    or, failing that, a Hugging Face checkpoint directory (see ``seqlens.models.hf``)."""
    from . import build

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"path: {directory} is not a directory (expected a zoo name or a local "
                                "checkpoint directory)")
    raw = read_config(directory)
    if "seqlens" not in raw:
        from .hf import from_hf
        model = from_hf(directory)
        raw = {}
    else:
        cfg = ModelConfig.from_dict(raw["seqlens"])
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"path: {directory} has no {WEIGHTS_FILE}")
        model = load_state_into(build(cfg, seed=0), load_safetensors(weights), directory)
    attach_record(model, raw, directory)
    attach_tokenizer(model, directory)
    if device is not None:
        model.to(device)
    return model.eval()


def attach_record(model: SeqModel, raw: dict[str, Any], directory: Path) -> None:
    """Set ``model.name`` (the directory name), ``model.recipe`` (the training
    :class:`~seqlens.models.train.Recipe` when ``config.json`` records one, else None) and
    ``model.metrics`` (recorded metrics, else {}), so analyses can rebuild the task a zoo organism
    was trained on (its vocabulary, BOS id, evaluation batches)."""
    model.name = directory.name
    model.recipe = None
    model.metrics = dict(raw.get("metrics") or {})
    if "recipe" in raw:
        from .train import Recipe

        model.recipe = Recipe.from_dict(raw["recipe"])


def attach_tokenizer(model: SeqModel, directory: Path) -> None:
    """Set ``model.tokenizer`` from tokenizer files in ``directory`` when present (local only)."""
    model.tokenizer = None
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((directory / n).exists() for n in names):
        return
    from transformers import AutoTokenizer

    try:
        model.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # a broken tokenizer should not hide a good model
        import warnings
        warnings.warn(f"tokenizer in {directory} could not be loaded: {e}", stacklevel=2)


def load(name_or_dir: str | os.PathLike, device: str | torch.device | None = None) -> SeqModel:
    """Open a zoo model by name, or a local directory (seqlens or Hugging Face format)."""
    from . import zoo

    if isinstance(name_or_dir, str) and name_or_dir in zoo.names():
        return zoo.load(name_or_dir, device=device)
    if Path(name_or_dir).exists():
        return load_dir(name_or_dir, device=device)
    raise FileNotFoundError(f"name_or_dir: {str(name_or_dir)!r} is neither a zoo model ({zoo.names()}) nor an "
                            "existing directory")
