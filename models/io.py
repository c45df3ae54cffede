"""Open a model from a local directory (ours or Hugging Face format). No network.

Zoo names are resolved one layer up (:func:`seqlens.models.load`), so this module never imports
the zoo. A seqlens checkpoint's config is checked against its weight file's header on the meta
device before any memory is allocated; checkpoints are written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
# the checkpoint primitives live in .checkpoint (hf needs them too); re-exported under their old home
from .checkpoint import (FLOAT_DTYPES, CheckpointError, check_state_names, json_type,  # noqa: F401
                         load_safetensors, load_state_into, read_config, read_header, read_json_object)
from .config import ModelConfig
from .sizing import MAX_PARAMS, check_model_size, estimate_parameters, meta_model  # noqa: F401

def parse_model_config(raw: Any, path: Path) -> ModelConfig:
    """``ModelConfig`` from the ``"seqlens"`` entry of ``path``, errors naming the file and field."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"path: {path}: field 'seqlens' must be a JSON object of ModelConfig "
                              f"fields, got {json_type(raw)}")
    try:
        return ModelConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"path: {path}: field 'seqlens': {e}") from None


def check_against_header(cfg: ModelConfig, header: dict[str, tuple[tuple[int, ...], str]],
                         source: Path) -> SeqModel:
    """Compare the parameters ``cfg`` implies with the weight file's header before any allocation:
    the size first (from a 2-layer twin), then every name, shape and dtype on a meta-device model,
    which is returned."""
    stored = sum(math.prod(shape) for shape, _ in header.values())
    implied = estimate_parameters(cfg)
    if implied > stored:  # name the first weight a 1-layer twin already gets wrong, if any
        _check_shapes(meta_model(cfg.replace(n_layers=1)), header, source, missing_ok=True)
        raise CheckpointError(f"path: {source}: the config implies {implied:,} parameters but the weight "
                              f"file holds {stored:,} values; config.json does not match the weights")
    model = meta_model(cfg)
    check_state_names(model, dict(header), source)
    _check_shapes(model, header, source)
    return model


def _check_shapes(model: SeqModel, header: dict[str, tuple[tuple[int, ...], str]], source: Path,
                  missing_ok: bool = False) -> None:
    """Every header entry has a floating dtype and the shape ``model`` implies (entries ``model``
    lacks are skipped when ``missing_ok``)."""
    own_state = model.state_dict()
    for k, (shape, dtype) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"path: {source}: weight {k!r} has dtype {dtype}; expected a floating "
                                  f"point tensor ({', '.join(FLOAT_DTYPES)})")
        if k not in own_state and missing_ok:
            continue
        own = tuple(own_state[k].shape)
        if own != shape:
            raise CheckpointError(f"path: {source}: weight {k!r} has shape {list(shape)} but the config "
                                  f"implies {list(own)}")


def materialise(model: SeqModel, cfg: ModelConfig) -> SeqModel:
    """Real (uninitialised) CPU storage for a checked meta-device model, to be overwritten by a
    full ``load_state_into``. A model with non-persistent buffers (not in the checkpoint) is built
    normally instead, as those cannot be recomputed here."""
    from .registry import build

    if set(dict(model.named_buffers())) - set(model.state_dict()):
        return build(cfg, seed=0)
    model = model.to_empty(device="cpu")
    if cfg.tied_embeddings:  # to_empty gives each parameter its own storage: tie again
        model.unembed.weight = model.embed.weight
    return model


def load_dir(path: str | os.PathLike, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> SeqModel:
    """Load a seqlens checkpoint (``config.json`` with a ``"seqlens"`` key + ``model.safetensors``)
    or, failing that, a Hugging Face checkpoint directory (see ``seqlens.models.hf``)."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"path: {directory} is not a directory (expected a zoo name or a local "
                                "checkpoint directory)")
    raw = read_config(directory)
    if "seqlens" not in raw:
        from .hf import from_hf
        # converted tensor by tensor straight into the target dtype and device (no second copy)
        model = from_hf(directory, dtype=dtype or torch.float32, device=device or "cpu")
        raw = {}
    else:
        cfg = parse_model_config(raw["seqlens"], directory / CONFIG_FILE)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"path: {directory} has no {WEIGHTS_FILE}")
        # shapes and size are checked against the header before any memory is allocated
        model = materialise(check_against_header(cfg, read_header(weights), directory), cfg)
        model = load_state_into(model, load_safetensors(weights), directory)
    attach_record(model, raw, directory)
    attach_tokenizer(model, directory)
    if device is not None:
        model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def attach_record(model: SeqModel, raw: dict[str, Any], directory: Path) -> None:
    """Set ``model.name`` (the directory name), ``model.recipe`` (the training
    :class:`~seqlens.models.train.Recipe` when ``config.json`` records one, else None) and
    ``model.metrics`` (recorded metrics, else {}), so analyses can rebuild the task a zoo organism
    was trained on (its vocabulary, BOS id, evaluation batches)."""
    path = directory / CONFIG_FILE
    model.name = directory.name
    model.recipe = None
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"path: {path}: field 'metrics' must be a JSON object, got {json_type(metrics)}")
    model.metrics = dict(metrics)
    if "recipe" in raw:
        from .train import Recipe

        if not isinstance(raw["recipe"], dict):
            raise CheckpointError(f"path: {path}: field 'recipe' must be a JSON object, got "
                                  f"{json_type(raw['recipe'])}")
        try:
            model.recipe = Recipe.from_dict(raw["recipe"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"path: {path}: field 'recipe': {e}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def custom_code_file(directory: Path) -> Path | None:
    """The first of ``tokenizer_config.json`` / ``config.json`` that declares custom code
    (``auto_map``): loading through it would mean running Python from the checkpoint folder."""
    for name in ("tokenizer_config.json", CONFIG_FILE):
        try:
            raw = read_json_object(directory / name)
        except CheckpointError:  # absent or unreadable: nothing declared there
            continue
        if "auto_map" in raw:
            return directory / name
    return None


def attach_tokenizer(model: SeqModel, directory: Path) -> None:
    """Set ``model.tokenizer`` from tokenizer files in ``directory`` when present (local only).
    Code from the folder is never run: a folder whose configs declare custom code (``auto_map``)
    gets no tokenizer and a warning, and transformers is told ``trust_remote_code=False`` (so it
    never prompts on stdin)."""
    import warnings

    model.tokenizer = None
    if not any((directory / n).exists() for n in TOKENIZER_FILES):
        return
    custom = custom_code_file(directory)
    if custom is not None:
        warnings.warn(f"{custom} declares custom code (auto_map); seqlens never runs code from a checkpoint "
                      "folder, so no tokenizer is attached (model.tokenizer is None)", stacklevel=2)
        return
    from transformers import AutoTokenizer

    try:
        model.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                        trust_remote_code=False)
    except Exception as e:  # a broken tokenizer should not hide a good model
        warnings.warn(f"tokenizer in {directory} could not be loaded: {e}", stacklevel=2)
