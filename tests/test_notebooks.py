"""notebooks/: every notebook executes top to bottom (nbclient, a fresh python3 kernel, the zoo,
small settings), without an error, and its Results display inline (``Result._repr_html_``: the
settings, the table and the figure)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT = 600  # seconds per cell: a hang, not a speed check


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"01_tour", "02_circuits_ablation", "03_states_capacity",
                                           "04_saes_attribution"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbclient, nbformat, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]'")
    book = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code"), "commit notebooks without outputs"
    client = nbclient.NotebookClient(book, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert shown, "no Result displayed inline"
    assert any("Plotly.newPlot" in h or "plotly" in h.lower() for h in shown)  # a figure, not just text


def test_result_repr_html_shows_settings_table_and_figure():
    import torch

    from seqlens.circuits import HeadScores
    from seqlens.result import _PLOTLY_JS_SENT

    res = HeadScores(scores=torch.arange(24.0).reshape(2, 12), name="planted", settings={"data": "planted"})
    _PLOTLY_JS_SENT[0] = False
    first, second = res._repr_html_(), res._repr_html_()
    assert first.startswith("<b>HeadScores</b>") and "data = planted" in first
    assert "<table" in first and "24 rows; the first 10" in first  # to_frame: 2 × 12 heads
    assert "Plotly.newPlot" in first and "Plotly.newPlot" in second
    assert len(first) > 1_000_000 > len(second)  # plotly.js inlined once per kernel, then reused (offline)
