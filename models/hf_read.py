"""Reading Hugging Face checkpoints for :mod:`.hf`, one tensor at a time.

A checkpoint directory's tensors are found from the safetensors headers alone (``model.safetensors``
or the shards named in ``model.safetensors.index.json``); a tensor's data is read only when the
conversion takes it, and the converted pieces are copied into the model layer by layer
(:class:`StreamingCopy`), so loading never holds a second full copy of the weights: peak memory is
the model plus about one layer (docs/architectures.md gives the measurement). Pickled ``.bin``
weights are refused, never loaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch
from torch import Tensor

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .checkpoint import CheckpointError, read_config, read_header

ARG = "path_or_model"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# buffers that old checkpoints saved beside the parameters (causal masks, rotary tables)
IGNORED_BUFFERS = re.compile(r"(^|\.)(attn|attention)\.(bias|masked_bias)$|(^|\.)rotary_emb\.inv_freq$")


class TensorSource:
    """Tensors by name with their shapes known up front: ``shapes[name]`` and ``read(name)``.
    This base holds tensors already in memory (a loaded transformers model's state dict)."""

    def __init__(self, tensors: dict[str, Tensor]):
        self.tensors = tensors
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def read(self, name: str) -> Tensor:
        return self.tensors[name]


class SafetensorsSource(TensorSource):
    """Tensors of safetensors files, read one at a time: each read maps the file, copies that
    tensor out and unmaps it, so nothing but the tensors handed out stays resident."""

    def __init__(self, files: Iterable[Path]):
        self.files: dict[str, Path] = {}
        self.shapes = {}
        for path in files:
            for name, (shape, _) in read_header(path).items():  # a corrupt header raises here
                self.files[name], self.shapes[name] = path, shape

    def read(self, name: str) -> Tensor:
        from safetensors import safe_open

        path = self.files[name]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as e:  # SafetensorError / OSError on truncated data
            raise CheckpointError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): "
                                  f"{e}") from None


class Checkpoint(NamedTuple):
    """A Hugging Face checkpoint opened for conversion: its config dict, a label for messages,
    the path recorded in ``cfg.meta`` and a function opening its tensors (called only once the
    config is known to be supported, so unsupported models cost no weight reading)."""

    config: dict[str, Any]
    label: str
    path: str | None
    open_tensors: Any  # () -> TensorSource


def open_checkpoint(path_or_model: Any) -> Checkpoint:
    """Open a checkpoint directory or a loaded ``transformers`` model."""
    if isinstance(path_or_model, (str, os.PathLike)):
        directory = Path(path_or_model)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{ARG}: {directory} is not a directory; expected a local Hugging Face checkpoint "
                f"directory ({CONFIG_FILE} + safetensors) or a loaded transformers model")
        if not (directory / CONFIG_FILE).is_file():
            raise CheckpointError(f"{ARG}: {directory} has no {CONFIG_FILE}; expected a Hugging Face "
                                  "checkpoint directory")
        return Checkpoint(read_config(directory), str(directory), str(directory),
                          lambda: SafetensorsSource(weight_files(directory)))
    if hasattr(path_or_model, "config") and callable(getattr(path_or_model, "state_dict", None)):
        return _open_model(path_or_model)
    raise TypeError(f"{ARG}: expected a checkpoint directory (str or os.PathLike) or a loaded "
                    f"transformers model, got {type(path_or_model).__name__}")


def _open_model(model: Any) -> Checkpoint:
    """A loaded ``transformers`` model: its config as a dict and its state dict."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    name = config.get("_name_or_path") or None
    label = type(model).__name__ + (f" ({name})" if name else "")
    return Checkpoint(config, label, name,
                      lambda: TensorSource({k: v.detach() for k, v in model.state_dict().items()}))


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: ``model.safetensors`` or the shards listed
    in ``model.safetensors.index.json``. Pickled ``.bin`` weights are refused, never loaded."""
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if (directory / INDEX_FILE).is_file():
        return _shards(directory)
    pickled = [name for name in PICKLE_FILES if (directory / name).is_file()]
    if pickled:
        raise CheckpointError(
            f"{ARG}: {directory} has no safetensors weights, only {pickled[0]}; seqlens never unpickles "
            ".bin files: convert with save_pretrained(..., safe_serialization=True)")
    raise CheckpointError(f"{ARG}: {directory} has no weights; expected {WEIGHTS_FILE} or {INDEX_FILE}")


def _shards(directory: Path) -> list[Path]:
    """The safetensors shards named in the index's ``weight_map``."""
    index_path = directory / INDEX_FILE
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ARG}: {index_path} is not a valid safetensors index ({e!r})") from None
    paths = []
    for shard in sorted(set(weight_map.values())):
        path = directory / shard
        if Path(shard).name != shard or not path.is_file():
            raise CheckpointError(
                f"{ARG}: shard {shard!r} listed in {index_path} is not a file in {directory}")
        paths.append(path)
    return paths


class Weights:
    """The checkpoint's tensors by name, with the family's base-model prefix (``transformer.``,
    ``gpt_neox.``, ``model.``, ``backbone.``) removed where present, since checkpoints saved from
    the bare base model lack it. ``take`` checks a tensor's shape (from the header: before any data
    is read) and hands it out once; ``check_consumed`` then refuses any weight nobody took."""

    def __init__(self, source: TensorSource | dict[str, Tensor], prefix: str, label: str):
        self.label = label
        self.source = source if isinstance(source, TensorSource) else TensorSource(source)
        self.full_names = {name.removeprefix(prefix): name for name in self.source.shapes}

    def has(self, name: str) -> bool:
        return name in self.full_names

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """Remove and return weight ``name``, requiring the ``shape`` the config implies."""
        if name not in self.full_names:
            raise CheckpointError(f"{ARG}: {self.label}: missing weight {name!r} (the checkpoint is "
                                  "incomplete or does not match its config.json)")
        full = self.full_names.pop(name)
        if tuple(self.source.shapes[full]) != tuple(shape):
            raise CheckpointError(
                f"{ARG}: {self.label}: weight {full!r} has shape {list(self.source.shapes[full])} "
                f"but config.json implies {list(shape)}")
        return self.source.read(full)

    def check_consumed(self) -> None:
        """Raise if weights remain that the conversion did not use (saved buffers excepted)."""
        left = [full for short, full in self.full_names.items() if not IGNORED_BUFFERS.search(short)]
        if left:
            raise CheckpointError(f"{ARG}: {self.label}: unexpected weights {left[:8]}"
                                  f"{' ...' if len(left) > 8 else ''} that config.json does not explain")


class StreamingCopy:
    """Copies converted pieces of a state dict into ``model`` as they come (name, shape and
    floating-point checks as :func:`~seqlens.models.checkpoint.load_state_into`), so no full
    second copy of the weights exists; ``finish`` requires every parameter to have been written."""

    def __init__(self, model: SeqModel, label: str):
        self.model, self.label = model, label
        self.own = model.state_dict(keep_vars=True)
        self.done: set[str] = set()

    def copy(self, part: dict[str, Tensor]) -> None:
        for name, value in part.items():
            if name not in self.own:
                raise CheckpointError(f"path: {self.label}: weight {name!r} is not a parameter of the model")
            if not value.is_floating_point():
                raise CheckpointError(f"path: {self.label}: weight {name!r} has dtype {value.dtype}; expected "
                                      "a floating point tensor")
            if self.own[name].shape != value.shape:
                raise CheckpointError(f"path: {self.label}: weight {name!r} has shape {list(value.shape)} but "
                                      f"the config implies {list(self.own[name].shape)}")
            with torch.no_grad():
                self.own[name].copy_(value)
            self.done.add(name)

    def finish(self) -> SeqModel:
        tied = {"unembed.weight"} if self.model.cfg.tied_embeddings else set()
        missing = sorted(set(self.own) - self.done - tied)
        if missing:
            raise CheckpointError(f"path: {self.label} does not match the config: missing {missing[:8]}")
        return self.model
