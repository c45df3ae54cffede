"""Plotly figures shared by several Results: attention-pattern heatmaps with token labels (the
``Patterns`` and ``CalibrationPatterns`` Results draw with them; this module only draws)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MAX_LABELLED_TICKS = 48  # beyond this, every k-th token is labelled on the axes
MAX_HOVER_TOKENS = 128   # per-cell hover text (token labels) up to this length


def _ticks(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(labels) / MAX_LABELLED_TICKS))
    idx = list(range(0, len(labels), step))
    return idx, [f"{labels[i]}" for i in idx]


def _hover(labels: Sequence[str]) -> np.ndarray | None:
    L = len(labels)
    if L > MAX_HOVER_TOKENS:
        return None
    q = np.array([f"{i} {labels[i]!r}" for i in range(L)], dtype=object)
    return np.stack([np.stack([q, np.full(L, q[j], dtype=object)], -1) for j in range(L)], 1)


def pattern_figure(patterns: np.ndarray, labels: Sequence[str], titles: Sequence[str], *,
                   signed: bool = False, cols: int = 2, height_per_row: int = 420, title: str = ""):
    """Heatmaps ``patterns [n, L, L]`` (query rows, key columns) in a grid of ``cols`` columns.
    ``signed``: a diverging colour scale centred on 0 (raw implicit attention)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    patterns = np.asarray(patterns, dtype=np.float32)
    n, L, _ = patterns.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.06,
                        vertical_spacing=0.12 if rows > 1 else 0.08)
    custom = _hover(labels)
    lim = float(np.abs(patterns).max()) or 1.0
    scale = dict(colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim) if signed else \
        dict(colorscale="Blues", zmin=0.0, zmax=float(patterns.max()) or 1.0)
    template = ("query %{customdata[0]}<br>key %{customdata[1]}<br>%{z:.3f}<extra></extra>" if custom is not None
                else "query %{y} → key %{x}<br>%{z:.3f}<extra></extra>")
    tickvals, ticktext = _ticks(labels)
    for k in range(n):
        r, c = divmod(k, cols)
        fig.add_trace(go.Heatmap(z=patterns[k], customdata=custom, hovertemplate=template,
                                 showscale=(k == 0), colorbar={"title": "weight", "len": 0.8}, **scale),
                      row=r + 1, col=c + 1)
        fig.update_xaxes(tickvals=tickvals, ticktext=ticktext, tickangle=0 if L <= 24 else -90,
                         tickfont={"size": 9}, row=r + 1, col=c + 1, title_text="key" if r == rows - 1 else None)
        fig.update_yaxes(tickvals=tickvals, ticktext=ticktext, autorange="reversed", tickfont={"size": 9},
                         row=r + 1, col=c + 1, title_text="query" if c == 0 else None)
    fig.update_layout(height=height_per_row * rows + 60, margin={"l": 40, "r": 20, "t": 60, "b": 40},
                      title=title or None)
    return fig


def lines_figure(curves: dict[str, Sequence[float]], *, title: str = "", x_title: str = "", y_title: str = "",
                 hline: float | None = None, hline_text: str = "", height: int = 420):
    """One line (with markers) per ``curves`` entry over positions 0..n-1, and an optional
    dashed horizontal line at ``hline`` (a threshold)."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(y=[float(v) for v in ys], mode="lines+markers", name=name)
                     for name, ys in curves.items()])
    if hline is not None:
        fig.add_hline(y=float(hline), line_dash="dash", annotation_text=hline_text)
    fig.update_layout(title=title or None, xaxis_title=x_title, yaxis_title=y_title, height=height)
    return fig
