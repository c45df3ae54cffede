"""The Compare page: one analysis on several organisms of different architectures, side by side on
shared axes (AppTest), and its figure helpers on planted Results."""

from __future__ import annotations

import pytest
import torch

from apptest_helpers import keyed_charts, no_problem, open_app


def test_finder_figure_puts_every_organism_on_one_colour_scale():
    from seqlens.app.compare import finder_figure
    from seqlens.circuits import HeadScores

    planted = {"a": HeadScores(scores=torch.tensor([[0.125, 0.25], [0.375, 0.5]]), name="induction"),
               "b": HeadScores(scores=torch.tensor([[-0.5, 0.0, 0.75]]), name="induction")}
    fig = finder_figure(planted)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert [list(map(list, t.z)) for t in heatmaps] == [[[0.125, 0.25], [0.375, 0.5]], [[-0.5, 0.0, 0.75]]]
    assert {(t.zmin, t.zmax) for t in heatmaps} == {(-0.5, 0.75)}  # the global range, not each panel's
    assert [t.showscale for t in heatmaps] == [True, False]        # one colour bar for all
    assert [a.text for a in fig.layout.annotations][:2] == ["a", "b"]


def test_relevance_figure_shares_of_total_relevance():
    from types import SimpleNamespace

    from seqlens.app.compare import relevance_figure

    fig = relevance_figure({"m": SimpleNamespace(relevance=torch.tensor([[1.0, -1.0, 2.0]]))})
    assert list(fig.data[0].y) == [0.25, -0.25, 0.5]  # R / Σ|R|


@pytest.mark.slow
def test_compare_page_runs_on_five_architectures():
    at = open_app("compare")
    no_problem(at)
    chosen = at.multiselect(key="w_compare_models").value
    assert len(chosen) >= 4
    at.button(key="compare_run").click().run()
    no_problem(at)
    fig = keyed_charts(at)["compare_figure"]
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == len(chosen)
    assert len({(t["zmin"], t["zmax"]) for t in heatmaps}) == 1  # shared colour scale
    archs = next(c.value for c in at.caption if c.value.startswith("Architectures:"))
    assert "5 different" in archs, archs
    at.selectbox(key="w_compare_what").set_value("pattern").run()
    at.button(key="compare_run").click().run()
    no_problem(at)
    fig = keyed_charts(at)["compare_figure"]
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == len(chosen)
    assert {(t["zmin"], t["zmax"]) for t in heatmaps} == {(0.0, 1.0)}
    sizes = {len(t["z"]) for t in heatmaps}
    assert len(sizes) == 1  # every organism saw the same prompt
