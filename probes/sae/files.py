"""The files of an SAELens 6 SAE directory and how they are written (atomically: a reader never
sees a half-written file). Kept apart from :mod:`.io` so the SAE classes can save themselves
without an import cycle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens release whose format this package writes and was checked against (scripts/saelens_compat.py).
# SAELens reads a cfg without "sae_lens_version" as a pre-6.0 config and then drops the nested
# metadata (hook_name, model_name), so saved configs carry it.
SAELENS_FORMAT_VERSION = "6.54.12"


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_directory(directory: str | os.PathLike, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``sae_weights.safetensors`` (``tensors``, on the CPU) and then ``cfg.json`` (``cfg``
    with the format marker in its metadata and ``device: "cpu"``) to ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(weights, tmp))
    cfg = {**cfg, "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, **cfg.get("metadata", {})},
           "device": "cpu"}  # the weights on disk are on the CPU whatever device trained them
    text = json.dumps(cfg)
    atomic_write(d / CFG_FILE, lambda tmp: Path(tmp).write_text(text))
    return d
