"""Attention patterns of every layer, for any architecture (docs/design.md: head finders take these).

Softmax attention (transformer, FoX) gives rows that are probability distributions (each sums to
1). The implicit attention of recurrent mixers (docs/methods.md §7: Mamba, GLA / RetNet, minGRU /
minLSTM, LSTM) is a signed mixing matrix whose rows do not sum to 1; for template scores docs/methods.md
§7 normalises it as ``|α_{t,s}| / Σ_s |α_{t,s}|``. ``normalisation`` records which was used.

:func:`attention_patterns` returns one layer's patterns on one sequence as a :class:`Patterns`
Result (frame, heatmap figure with token labels, JSON): what the dashboard shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from seqlens.result import Result

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


# ----------------------------------------------------------------------------- Patterns Result


@dataclass(kw_only=True)
class Patterns(Result):
    """The attention pattern ``[H, L, L]`` (queries × keys) of every head / channel group of one
    layer on one sequence ``tokens``: softmax attention, or the implicit attention of a recurrent
    mixer (``implicit``), normalised as ``normalisation`` says (see :func:`layer_patterns`).
    ``labels``: one display string per token (default: the token ids)."""

    patterns: Tensor
    layer: int
    tokens: list[int]
    normalisation: str
    implicit: bool = False
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        self.patterns = torch.as_tensor(self.patterns, dtype=torch.float32)
        L = len(self.tokens)
        if self.patterns.dim() != 3 or tuple(self.patterns.shape[1:]) != (L, L):
            raise ValueError(f"patterns: expected shape [heads, {L}, {L}], got {list(self.patterns.shape)}")
        if self.labels is None:
            self.labels = [str(t) for t in self.tokens]
        elif len(self.labels) != L:
            raise ValueError(f"labels: expected {L} labels (one per token), got {len(self.labels)}")

    @property
    def n_heads(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def signed(self) -> bool:
        """True when the weights are raw implicit attention (signed, rows not summing to 1)."""
        return self.implicit and self.normalisation == "none"

    def head_names(self) -> list[str]:
        return [f"L{self.layer}H{h}" for h in range(self.n_heads)]

    def to_frame(self):
        """Long ``pandas.DataFrame``: ``head, query, key, weight`` (causal entries, key ≤ query)."""
        import pandas as pd

        H, L, _ = self.patterns.shape
        h, q, k = torch.meshgrid(torch.arange(H), torch.arange(L), torch.arange(L), indexing="ij")
        keep = k <= q
        return pd.DataFrame({"head": h[keep].tolist(), "query": q[keep].tolist(), "key": k[keep].tolist(),
                             "weight": self.patterns[keep].tolist()})

    def figure(self, heads: Sequence[int] | None = None, cols: int = 2, height_per_row: int | None = None,
               title: str | None = None):
        """Heatmaps of ``heads`` (default all) with token labels, a diverging scale when
        :attr:`signed`."""
        from seqlens.figures import pattern_figure

        idx = list(range(self.n_heads)) if heads is None else [int(h) for h in heads]
        names = self.head_names()
        kind = "implicit attention" if self.implicit else "attention"
        L = len(self.tokens)
        return pattern_figure(self.patterns[idx].numpy(), self.labels, [names[h] for h in idx], signed=self.signed,
                              cols=cols, height_per_row=height_per_row or (420 if L <= 64 else 520),
                              title=f"Layer {self.layer} {kind} (rows: queries, columns: keys)" if title is None
                              else title)


def attention_patterns(model, tokens: Tensor | Sequence[int], layer: int, normalisation: str = "auto",
                       labels: Sequence[str] | None = None) -> Patterns:
    """The :class:`Patterns` of layer ``layer`` on one sequence ``tokens`` (``[L]`` or ``[1, L]``),
    as :func:`layer_patterns` computes them (``model.mixer_pattern``, then ``normalisation``)."""
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"tokens: expected one non-empty sequence [L] or [1, L], got shape {list(t.shape)}")
    mode = resolve_normalisation(model, normalisation)
    with torch.no_grad():
        p = model.mixer_pattern(t[None].to(model.device), layer).float()
    p = (normalise_rows(p) if mode == "abs_rows" else p)[0].cpu()
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                "layer": layer, "normalisation": mode, "source": "mixer_pattern"}
    return Patterns(patterns=p, layer=layer, tokens=t.tolist(), normalisation=mode,
                    implicit=not is_softmax_model(model), labels=None if labels is None else list(labels),
                    settings=settings)
