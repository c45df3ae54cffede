"""Checkpoint primitives shared by the loaders (:mod:`.io`, :mod:`.hf`): the error type, reading
``config.json`` (and any JSON object file) and safetensors files or their headers, and copying a
state dict into a model with name, shape and dtype checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import CONFIG_FILE, SeqModel


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing, corrupt or mismatched)."""


MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kB; refuse to parse a huge file
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype codes a weight may have

def json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value (for messages)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_json_object(path: Path, what: str = "path") -> dict[str, Any]:
    """The JSON object in file ``path``; a clear CheckpointError naming the file when it is too big,
    not UTF-8 text, not JSON or not an object."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{what}: {path} is {path.stat().st_size:,} bytes; a JSON config is "
                                  f"expected to be under {MAX_CONFIG_BYTES:,}")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{what}: {path} is not UTF-8 text (a binary file?); expected JSON") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{what}: {path} is nested too deeply to be a config") from None
    except OSError as e:
        raise CheckpointError(f"{what}: {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{what}: {path} holds a JSON {json_type(raw)}; expected an object")
    return raw


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"path: {directory} has no {CONFIG_FILE}; expected a seqlens or Hugging Face "
                              "checkpoint directory")
    return read_json_object(path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning truncation / corruption into a clear CheckpointError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise CheckpointError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype code)}`` of a safetensors file from its header alone (no tensor data)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:  # SafetensorError on a bad header
        raise CheckpointError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_state_names(model: SeqModel, state: dict[str, Any], source: Path) -> None:
    """Require identical parameter names (tied weights may be stored once)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (k == "unembed.weight" and model.cfg.tied_embeddings)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"path: {source} does not match the config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")


def load_state_into(model: SeqModel, state: dict[str, torch.Tensor], source: Path) -> SeqModel:
    """Copy ``state`` into ``model`` requiring identical names and shapes (tied weights may be
    stored once) and floating-point weights (an integer or bool tensor is an error, not a cast)."""
    check_state_names(model, state, source)
    own = model.state_dict()
    for k, v in state.items():
        if not v.is_floating_point():
            raise CheckpointError(f"path: {source}: weight {k!r} has dtype {v.dtype}; expected a floating "
                                  "point tensor")
        if own[k].shape != v.shape:
            raise CheckpointError(f"path: {source}: weight {k!r} has shape {list(v.shape)} but the config "
                                  f"implies {list(own[k].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return model
