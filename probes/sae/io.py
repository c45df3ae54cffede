"""SAELens 6's on-disk format, both ways: a directory with ``cfg.json`` and
``sae_weights.safetensors`` (docs/methods.md §8).

``save`` writes what SAELens' ``save_inference_model`` writes: the inference config of the
architecture (BatchTopK SAEs as ``"jumprelu"``, matching pursuit without ``W_enc`` / ``b_enc``,
which SAELens ties or lacks) and exactly the state-dict tensors SAELens' ``load_state_dict`` expects
(it loads strictly). ``load`` reads such a directory, whoever wrote it, with safetensors only:
nothing is unpickled. Every problem is a ``ValueError`` / ``FileNotFoundError`` naming the file and
what was expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from seqlens.probes.sae.arch import ARCHITECTURES, DTYPES, SAE, SAEConfig, make_sae

from seqlens.probes.sae.files import CFG_FILE, SAELENS_FORMAT_VERSION, WEIGHTS_FILE  # noqa: F401

# top-level keys of a pre-6.0 cfg that SAELens moves into metadata (its LLM_METADATA_KEYS)
_PRE6_METADATA = ("model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
                  "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice",
                  "dataset_path", "sae_lens_version", "sae_lens_training_version")


def save(sae: SAE, directory: str | os.PathLike) -> Path:
    """Write ``sae`` to ``directory`` (created if needed) in SAELens 6's format; returns the path."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a seqlens SAE, got {type(sae).__name__}")
    return sae.save(directory)


def read_cfg(directory: Path) -> SAEConfig:
    """The ``SAEConfig`` of an SAE directory, with a clear error for each way it can be wrong."""
    path = directory / CFG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"directory: {str(directory)!r} has no {CFG_FILE} (an SAELens SAE directory "
                                f"holds {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if _is_pre6(data):
        data = _from_pre6(data)
    arch = data.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {arch!r}; this library reads {list(ARCHITECTURES)} "
                         "(BatchTopK SAEs are saved as 'jumprelu')")
    for key in ("d_in", "d_sae"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    data = {**data, "architecture": arch, "device": "cpu"}
    try:
        return SAEConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _is_pre6(data: dict[str, Any]) -> bool:
    """SAELens' test: no ``sae_lens_version`` (top level or metadata), or one below 6.0."""
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    version = data.get("sae_lens_version") or meta.get("sae_lens_version")
    if not isinstance(version, str):
        return True
    try:
        return int(version.split(".")[0]) < 6
    except ValueError:
        return True


def _from_pre6(data: dict[str, Any]) -> dict[str, Any]:
    """SAELens' ``handle_pre_6_0_config``, the parts that decide the codes: renamed keys, TopK SAEs
    saved as ``standard`` with ``activation_fn "topk"``, boolean ``normalize_activations``, and the
    model / hook keys moved into ``metadata``."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    cfg = {renames.get(k, k): v for k, v in data.items()}
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg.setdefault("architecture", "standard")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if cfg.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        cfg["normalize_activations"] = "expected_average_only_in" if norm else "none"
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    cfg["metadata"] = {**meta, **{k: cfg[k] for k in _PRE6_METADATA if k in cfg}}
    return cfg


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"directory: {str(path.parent)!r} has no {path.name}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_directory(directory: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: str | None = None) -> SAE:
    """An SAE from an SAELens-format directory. ``dtype`` overrides the saved one (like SAELens'
    ``load_from_disk(dtype=...)``)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"directory: {str(d)!r} is not a directory")
    cfg = read_cfg(d)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
        cfg = cfg.replace(dtype=dtype)
    state = read_weights(d / WEIGHTS_FILE)
    if cfg.architecture == "jumprelu" and "log_threshold" in state and "threshold" not in state:
        state["threshold"] = torch.exp(state.pop("log_threshold"))  # older SAELens checkpoints
    sae = make_sae(cfg)
    _check_state(sae, state, d / WEIGHTS_FILE)
    with torch.no_grad():
        for name in sae.PARAMS:
            getattr(sae, name).copy_(state[name].to(getattr(sae, name).dtype))
    return sae.to(device)


def _check_state(sae: SAE, state: dict[str, torch.Tensor], path: Path) -> None:
    """The saved tensors are exactly the architecture's, with the shapes its cfg says."""
    want = {name: tuple(getattr(sae, name).shape) for name in sae.PARAMS}
    missing = [n for n in want if n not in state]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing} for a {sae.architecture!r} SAE "
                         f"(expected {sorted(want)})")
    extra = sorted(set(state) - set(want))
    if extra:
        raise ValueError(f"{path}: unexpected tensors {extra} for a {sae.architecture!r} SAE "
                         f"(expected {sorted(want)})")
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{path}: {name} has shape {list(state[name].shape)}, expected {list(shape)} "
                             f"(d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae} in {CFG_FILE})")
        if not state[name].is_floating_point():
            raise ValueError(f"{path}: {name} has dtype {state[name].dtype}, expected a floating-point tensor")


def load(name_or_directory: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: str | None = None) -> SAE:
    """An SAE from an SAELens-format directory, or a shipped SAE by name (``"<organism>/<sae>"``,
    see :func:`list_shipped`)."""
    path = Path(name_or_directory)
    if path.is_dir():
        return load_directory(path, device, dtype)
    shipped = dict(_shipped())
    if str(name_or_directory) in shipped:
        return load_directory(shipped[str(name_or_directory)], device, dtype)
    raise FileNotFoundError(f"name_or_directory: {str(name_or_directory)!r} is neither a directory nor a "
                            f"shipped SAE (shipped: {sorted(shipped) or 'none yet'})")


def _shipped() -> list[tuple[str, Path]]:
    """``("<organism>/<sae>", directory)`` for SAEs shipped with the zoo: directories
    ``models/organisms/<organism>/saes/<sae>/`` holding a ``cfg.json``."""
    import seqlens.models as models

    root = Path(models.__file__).resolve().parent / "organisms"
    return sorted((f"{p.parent.parent.parent.name}/{p.parent.name}", p.parent)
                  for p in root.glob(f"*/saes/*/{CFG_FILE}"))


def list_shipped() -> list[str]:
    """Names of the SAEs shipped with the zoo, for :func:`load`."""
    return [name for name, _ in _shipped()]
