"""How big a model a config describes, known before anything is allocated: parameters counted on
the meta device, and the cap on what a config without a weight file (a recipe) may ask for."""

from __future__ import annotations

import os

import torch

from .base import SeqModel
from .config import ModelConfig
from .registry import model_class

# parameters a config without a weight file (a recipe, a preset) may ask for; SEQLENS_MAX_PARAMS overrides
MAX_PARAMS = int(os.environ.get("SEQLENS_MAX_PARAMS", 1_000_000_000))




def meta_model(cfg: ModelConfig) -> SeqModel:
    """The model ``cfg`` describes, on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"):
        return model_class(cfg.arch)(cfg)


def estimate_parameters(cfg: ModelConfig) -> int:
    """Parameters ``build(cfg)`` would allocate, counted on the meta device from a 1- and a 2-layer
    twin, so a config claiming 10**6 layers costs nothing to check."""
    one, two = (sum(p.numel() for p in meta_model(cfg.replace(n_layers=n)).parameters()) for n in (1, 2))
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
