"""Attention patterns of every layer, for any architecture (DESIGN.md: head finders take these).

Softmax attention (transformer, FoX) gives rows that are probability distributions (each sums to
1). The implicit attention of recurrent mixers (METHODS.md §7: Mamba, GLA / RetNet, minGRU /
minLSTM, LSTM) is a signed mixing matrix whose rows do not sum to 1; for template scores METHODS.md
§7 normalises it as ``|α_{t,s}| / Σ_s |α_{t,s}|``. ``normalisation`` records which was used.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALISATIONS = ("auto", "none", "abs_rows")


def is_softmax_model(model) -> bool:
    """True when every mixer of ``model`` is softmax attention (rows already sum to 1)."""
    return model.is_softmax


def resolve_normalisation(model, normalisation: str = "auto") -> str:
    """``"auto"`` -> ``"none"`` for softmax attention, ``"abs_rows"`` for implicit attention."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation: expected one of {list(NORMALISATIONS)}, got {normalisation!r}")
    if normalisation == "auto":
        return "none" if is_softmax_model(model) else "abs_rows"
    return normalisation


def normalise_rows(pattern: Tensor, eps: float = 1e-12) -> Tensor:
    """``|A| / Σ_k |A|`` along the key axis (last dim) of ``pattern [..., L_q, L_k]``; all-zero
    rows stay zero."""
    a = pattern.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(eps)


@torch.no_grad()
def layer_patterns(model, tokens: Tensor, normalisation: str = "auto") -> list[Tensor]:
    """One ``[B, H, L, L]`` float32 pattern per layer of ``model`` for ``tokens [B, L]``, via
    ``model.mixer_pattern``.

    ``normalisation``: ``"none"`` returns the mixer's matrix as is (softmax rows sum to 1, implicit
    attention rows do not and may be negative); ``"abs_rows"`` applies :func:`normalise_rows`;
    ``"auto"`` (default) picks ``"none"`` for softmax models and ``"abs_rows"`` for recurrent ones
    (see :func:`resolve_normalisation`, whose answer finders record in their settings).
    """
    mode = resolve_normalisation(model, normalisation)
    out = []
    for layer in range(model.cfg.n_layers):
        p = model.mixer_pattern(tokens, layer).float()
        out.append(normalise_rows(p) if mode == "abs_rows" else p)
    return out
