"""Rotary position embedding (RoPE) frequencies, plain and scaled, exactly as transformers
computes them (``transformers.modeling_rope_utils``: ``linear``, ``dynamic``, ``llama3``, ``yarn``).

A scaled RoPE changes only the inverse frequencies (and, for YaRN, multiplies cos and sin by an
"attention factor"); the rotation itself (``rotate_half`` layout) is the same for every type.
``ModelConfig.rope_scaling`` holds transformers' parameters besides ``rope_theta`` (which is
``ModelConfig.rotary_base``), e.g. ``{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}``.

``dynamic`` (NTK-aware) rescales the base by the longest position in the current call, as
transformers does: a forward over L tokens uses ``seq_len = L``; in step / stream each chunk uses
its own last position, with earlier keys kept as they were cached (transformers' ``generate``
behaves the same), so there step and forward differ past ``n_ctx``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
REQUIRED: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}
OPTIONAL_NUMBERS = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


def rope_type(scaling: dict[str, Any] | None) -> str:
    """The RoPE type of a parameter dict (transformers spells it ``rope_type``, older configs ``type``)."""
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope_scaling(scaling: Any) -> None:
    """Raise a ValueError naming ``ModelConfig.rope_scaling`` unless it is a dict of a known type
    with its required numbers (NotImplementedError for a type we do not implement)."""
    where = "ModelConfig.rope_scaling"
    if not isinstance(scaling, dict):
        raise ValueError(f"{where}: expected a dict of rope parameters, got {scaling!r}")
    kind = rope_type(scaling)
    if kind not in ROPE_TYPES:
        raise NotImplementedError(f"{where}: rope type {kind!r} is not implemented; implemented: {list(ROPE_TYPES)}")
    for key in REQUIRED[kind] + OPTIONAL_NUMBERS:
        value = scaling.get(key)
        if value is None and key not in REQUIRED[kind]:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{where}: rope type {kind!r} needs a positive number {key!r}, got {value!r}")


def _base_inv_freq(dim: int, base: float, device: torch.device | None) -> Tensor:
    # an odd dim gives ceil(dim / 2) frequencies (transformers accepts it; the rotation covers dim + 1)
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))


def _llama3(inv_freq: Tensor, p: dict[str, Any]) -> Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, base: float, p: dict[str, Any], device: torch.device | None) -> tuple[Tensor, float]:
    factor, old = p["factor"], p["original_max_position_embeddings"]
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
        attention_factor = (_yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all) if ms and ms_all
                            else _yarn_mscale(factor))
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in `old`
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1).to(device)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attention_factor)


def inv_freq(dim: int, base: float, scaling: dict[str, Any] | None, n_ctx: int, seq_len: int,
             device: torch.device | None = None) -> tuple[Tensor, float]:
    """Inverse frequencies ``[ceil(dim / 2)]`` (float32) and the factor cos / sin are multiplied by.

    ``n_ctx`` is the config's ``max_position_embeddings``; ``seq_len`` the longest position + 1 of
    the current call (used by ``dynamic`` only)."""
    kind, p = rope_type(scaling), scaling or {}
    if kind == "default":
        return _base_inv_freq(dim, base, device), 1.0
    if kind == "linear":
        return _base_inv_freq(dim, base, device) / p["factor"], 1.0
    if kind == "dynamic":
        factor, seq_len = p["factor"], max(seq_len, n_ctx)
        base = base * ((factor * seq_len / n_ctx) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(dim, base, device), 1.0
    if kind == "llama3":
        return _llama3(_base_inv_freq(dim, base, device), p), 1.0
    if kind == "yarn":
        return _yarn(dim, base, p, device)
    raise NotImplementedError(f"rope_scaling: rope type {kind!r} is not implemented")  # checked in ModelConfig


def cos_sin(positions: Tensor, dim: int, base: float, scaling: dict[str, Any] | None = None,
            n_ctx: int = 2048) -> tuple[Tensor, Tensor]:
    """``cos, sin [..., 2 ceil(dim / 2)]`` (float32, rotate-half layout) for integer ``positions``
    of any shape (``[T]``, or ``[B, T]`` when rows start at different positions)."""
    seq_len = int(positions.max()) + 1 if positions.numel() else 1
    freqs, factor = inv_freq(dim, base, scaling, n_ctx, seq_len, positions.device)
    angles = positions.float()[..., None] * freqs
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos() * factor, angles.sin() * factor
