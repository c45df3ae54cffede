"""The Compare page's figures: one analysis's Results from several organisms side by side on
shared axes (one panel per organism, one colour scale / one y range for all). Pure functions of
``{organism: Result}``, so they are tested without Streamlit; the Results come from the library
(through :mod:`seqlens.app.analyses`), nothing here computes an analysis."""

from __future__ import annotations

from typing import Any

ANALYSES = {
    "finder": "Head finder scores",
    "pattern": "Implicit attention on one prompt",
    "collapse": "Collapse curve (loss past the training length)",
    "gates": "Gate saturation",
    "relevance": "Relevance of each prompt token",
}
# the five MQAR organisms: one task and vocabulary, five mixers (shared data, shared axes)
DEFAULT_ORGANISMS = ["mqar-transformer", "mqar-mamba", "mqar-gla", "mqar-lstm", "mqar-mingru"]


def _panels(names: list[str], **kwargs: Any):
    from plotly.subplots import make_subplots

    return make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.05, **kwargs)


def heatmaps_figure(mats: dict[str, Any], title: str, zmin: float, zmax: float, x_title: str, y_title: str,
                    colorbar: str, height: int = 360):
    """One heatmap per organism on one colour scale ``[zmin, zmax]`` (a single colour bar)."""
    import plotly.graph_objects as go

    names = list(mats)
    fig = _panels(names, shared_yaxes=False)
    for i, name in enumerate(names, start=1):
        z = mats[name]
        fig.add_trace(go.Heatmap(z=z.tolist(), zmin=zmin, zmax=zmax, colorscale="Viridis", showscale=i == 1,
                                 colorbar={"title": colorbar, "len": 0.9}, name=name,
                                 hovertemplate=f"{name}<br>{x_title} %{{x}}<br>{y_title} %{{y}}<br>%{{z:.3f}}"
                                               "<extra></extra>"), row=1, col=i)
        step = 1 if x_title == "head" else None  # integer ticks for layers and heads
        fig.update_xaxes(title_text=x_title, dtick=step, row=1, col=i)
        fig.update_yaxes(autorange="reversed" if y_title == "query" else True, dtick=step, row=1, col=i)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left"}, height=height,
                      margin={"l": 50, "r": 20, "t": 80, "b": 50})
    return fig


def finder_figure(results: dict[str, Any]):
    """HeadScores of one finder per organism: layer × head heatmaps on one colour scale."""
    name = next(iter(results.values())).name
    values = [float(v) for r in results.values() for v in r.scores.flatten().tolist() if v == v]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    mats = {k: r.scores.detach().cpu().float() for k, r in results.items()}
    return heatmaps_figure(mats, f"{name} scores, one colour scale", lo, hi, "head", "layer", "score")


def pattern_figure(results: dict[str, Any], head: str = "mean"):
    """Patterns (one layer, one prompt) per organism, mean over heads, |α| / row sum on [0, 1]."""
    mats = {}
    for k, r in results.items():
        p = r.patterns.float()
        mats[k] = (p.mean(0) if head == "mean" else p[int(head)]).abs()
    layer = next(iter(results.values())).settings.get("layer")
    return heatmaps_figure(mats, f"layer {layer} (implicit) attention, mean over heads, |α| / row sum",
                           0.0, 1.0, "key", "query", "weight", height=380)


def lines_figure(series: dict[str, tuple[list, list]], title: str, x_title: str, y_title: str,
                 log_x: bool = False, vline: dict[str, float] | None = None, mode: str = "lines+markers"):
    """One line per organism on one pair of axes; ``vline``: a dotted marker per organism."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, (x, y) in series.items():
        fig.add_trace(go.Scatter(x=x, y=y, mode=mode, name=name))
    for name, x in (vline or {}).items():
        fig.add_vline(x=x, line_dash="dot", line_color="grey", annotation_text=f"L {name}",
                      annotation_position="top right", annotation_font_size=10)
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left"}, xaxis_title=x_title, yaxis_title=y_title,
                      height=420, margin={"l": 60, "r": 20, "t": 70, "b": 50}, legend={"orientation": "h", "y": -0.2})
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def collapse_figure(results: dict[str, Any]):
    """Next-token loss per position bucket of each organism's stream, the training lengths marked."""
    series, marks = {}, {}
    for name, r in results.items():
        frame = r.loss_frame()
        series[name] = (((frame["start"] + frame["end"]) / 2).tolist(), frame["loss"].tolist())
        marks[name] = float(r.train_len)
    return lines_figure(series, "loss per position bucket (dotted: each training length L)", "position",
                        "next-token loss (nats)", log_x=True, vline=marks)


def gates_figure(results: dict[str, Any]):
    """Mean fraction of saturated gate units (either side) per layer of each organism."""
    series = {}
    for name, r in results.items():
        by_layer: dict[int, list[float]] = {}
        for layer, left, right in zip(r.layers, r.left.tolist(), r.right.tolist()):
            by_layer.setdefault(int(layer), []).append(left + right)
        layers = sorted(by_layer)
        series[name] = (layers, [sum(by_layer[l]) / len(by_layer[l]) for l in layers])
    return lines_figure(series, "saturated gate units per layer (outside [low, high]), mean over gates",
                        "layer", "fraction saturated")


def relevance_figure(results: dict[str, Any]):
    """Each organism's relevance of every prompt token, as a share of Σ|R| (shared axes)."""
    series = {}
    for name, r in results.items():
        rel = r.relevance[0].float()
        total = float(rel.abs().sum()) or 1.0
        series[name] = (list(range(rel.numel())), (rel / total).tolist())
    return lines_figure(series, "relevance of each token for the prediction at the last position, R / Σ|R|",
                        "token position", "share of relevance")


FIGURES = {"finder": finder_figure, "pattern": pattern_figure, "collapse": collapse_figure, "gates": gates_figure,
           "relevance": relevance_figure}
