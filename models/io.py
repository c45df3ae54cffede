"""Open a model from a local directory (ours or Hugging Face format). No network.

Zoo names are resolved one layer up (:func:`seqlens.models.load`), so this module never imports
the zoo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import WEIGHTS_FILE, SeqModel
# the checkpoint primitives live in .checkpoint (hf needs them too); re-exported under their old home
from .checkpoint import CheckpointError, load_safetensors, load_state_into, read_config  # noqa: F401
from .config import ModelConfig


def load_dir(path: str | os.PathLike, device: str | torch.device | None = None) -> SeqModel:
    """Load a seqlens checkpoint (``config.json`` with a ``"seqlens"`` key + ``model.safetensors``)
    or, failing that, a Hugging Face checkpoint directory (see ``seqlens.models.hf``)."""
    from .registry import build

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


#END
