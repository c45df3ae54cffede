"""Open a model by zoo name or local directory (ours or Hugging Face format). No network."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .config import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing, corrupt or mismatched)."""


MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kB; refuse to parse a huge file
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype codes a weight may have
# parameters a config without a weight file (a recipe, a preset) may ask for; SEQLENS_MAX_PARAMS overrides
MAX_PARAMS = int(os.environ.get("SEQLENS_MAX_PARAMS", 1_000_000_000))


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


def parse_model_config(raw: Any, path: Path) -> ModelConfig:
    """``ModelConfig`` from the ``"seqlens"`` entry of ``path``, errors naming the file and field."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"path: {path}: field 'seqlens' must be a JSON object of ModelConfig "
                              f"fields, got {json_type(raw)}")
    try:
        return ModelConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"path: {path}: field 'seqlens': {e}") from None


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


def _meta_model(cfg: ModelConfig) -> SeqModel:
    """The model ``cfg`` describes, on the meta device: shapes only, no memory, no initialisation."""
    from . import model_class

    with torch.device("meta"):
        return model_class(cfg.arch)(cfg)


def estimate_parameters(cfg: ModelConfig) -> int:
    """Parameters ``build(cfg)`` would allocate, counted on the meta device from a 1- and a 2-layer
    twin, so a config claiming 10**6 layers costs nothing to check."""
    one, two = (sum(p.numel() for p in _meta_model(cfg.replace(n_layers=n)).parameters()) for n in (1, 2))
    return one + (cfg.n_layers - 1) * (two - one)


def check_model_size(cfg: ModelConfig, max_params: int | None = None, what: str = "cfg") -> int:
    """Refuse a config implying more than ``max_params`` (default :data:`MAX_PARAMS`) parameters,
    before anything is allocated; returns the estimate."""
    limit = MAX_PARAMS if max_params is None else max_params
    n = estimate_parameters(cfg)
    if n > limit:
        raise ValueError(f"{what}: the config implies {n:,} parameters, above the limit of {limit:,} "
                         "(set SEQLENS_MAX_PARAMS to allow more)")
    return n


def check_against_header(cfg: ModelConfig, header: dict[str, tuple[tuple[int, ...], str]],
                         source: Path) -> SeqModel:
    """Compare the parameters ``cfg`` implies with the weight file's header before any allocation:
    the size first (from a 2-layer twin), then every name, shape and dtype on a meta-device model,
    which is returned."""
    stored = sum(math.prod(shape) for shape, _ in header.values())
    implied = estimate_parameters(cfg)
    if implied > stored:  # name the first weight a 1-layer twin already gets wrong, if any
        _check_shapes(_meta_model(cfg.replace(n_layers=1)), header, source, missing_ok=True)
        raise CheckpointError(f"path: {source}: the config implies {implied:,} parameters but the weight "
                              f"file holds {stored:,} values; config.json does not match the weights")
    model = _meta_model(cfg)
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
    from . import build

    if set(dict(model.named_buffers())) - set(model.state_dict()):
        return build(cfg, seed=0)
    model = model.to_empty(device="cpu")
    if cfg.tied_embeddings:  # to_empty gives each parameter its own storage: tie again
        model.unembed.weight = model.embed.weight
    return model


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace`` it into place: a
    reader or a crash never sees a half-written file, and a failure leaves ``path`` as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(model: SeqModel, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` then ``config.json`` (``{"seqlens": cfg, ...extra}``), each
    atomically (see :func:`atomic_write`)."""
    from safetensors.torch import save_model

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"seqlens": model.cfg.to_dict(), **(extra or {})}, indent=2)
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_model(model, str(tmp)))
    atomic_write(d / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return d


def load_dir(path: str | os.PathLike, device: str | torch.device | None = None) -> SeqModel:
    """Load a seqlens checkpoint (``config.json`` with a ``"seqlens"`` key + ``model.safetensors``)
    or, failing that, a Hugging Face checkpoint directory (see ``seqlens.models.hf``)."""
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


def load(name_or_dir: str | os.PathLike, device: str | torch.device | None = None) -> SeqModel:
    """Open a zoo model by name, or a local directory (seqlens or Hugging Face format)."""
    from . import zoo

    if not isinstance(name_or_dir, (str, os.PathLike)) or str(name_or_dir) == "":
        raise TypeError(f"name_or_dir: expected a zoo name or a directory path, got {name_or_dir!r}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device: {device!r} is not a torch device ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} was asked for but CUDA is not available")
    if isinstance(name_or_dir, str) and name_or_dir in zoo.names():
        return zoo.load(name_or_dir, device=device)
    if Path(name_or_dir).exists():
        return load_dir(name_or_dir, device=device)
    raise FileNotFoundError(f"name_or_dir: {str(name_or_dir)!r} is neither a zoo model ({zoo.names()}) nor an "
                            "existing directory")
