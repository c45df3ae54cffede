"""`HeadScores`: one number per (layer, head), the Result every head finder returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seqlens.result import Result


@dataclass(kw_only=True)
class HeadScores(Result):
    """Scores ``[n_layers, n_heads]`` of one head family.

    ``name``: the family ("previous_token", "duplicate_token", "induction", ...). ``settings``:
    how they were computed (model name / arch, data source, seed, measure, normalisation, backend).
    For recurrent models "heads" are the mixer's pattern groups (see ``SeqModel.mixer_pattern``).
    """

    scores: Tensor
    name: str = "heads"

    def __post_init__(self) -> None:
        if not isinstance(self.scores, Tensor):
            self.scores = torch.as_tensor(self.scores, dtype=torch.float32)
        if self.scores.dim() != 2:
            raise ValueError(f"scores: expected shape [n_layers, n_heads], got {list(self.scores.shape)}")

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def top(self, k: int = 5) -> list[tuple[tuple[int, int], float]]:
        """The ``k`` best heads as ``((layer, head), score)``, highest score first (NaNs last)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        flat = torch.nan_to_num(self.scores.flatten().float(), nan=float("-inf"))
        order = torch.argsort(flat, descending=True, stable=True)[:k]
        return [((int(i) // self.n_heads, int(i) % self.n_heads), float(self.scores.flatten()[i]))
                for i in order]

    def to_frame(self):
        """``pandas.DataFrame`` with columns ``layer, head, score`` (one row per head)."""
        import pandas as pd

        L, H = self.scores.shape
        return pd.DataFrame({
            "layer": [l for l in range(L) for _ in range(H)],
            "head": [h for _ in range(L) for h in range(H)],
            "score": self.scores.detach().cpu().flatten().tolist(),
        })

    def figure(self, **layout: Any):
        """Plotly heatmap, layer (rows) × head (columns), with the score in the hover text;
        ``layout`` overrides plotly layout settings."""
        import plotly.graph_objects as go

        z = self.scores.detach().cpu().float()
        L, H = z.shape
        hover = [[f"L{l}H{h}: {z[l, h].item():.4f}" for h in range(H)] for l in range(L)]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=list(range(H)), y=list(range(L)), text=hover,
                                   hoverinfo="text", colorscale="Viridis", colorbar={"title": "score"}))
        measure = self.settings.get("measure", "")
        title = f"{self.name} scores" + (f" ({measure})" if measure else "")
        fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer")
        fig.update_layout(**layout)  # the caller's settings win
        return fig
