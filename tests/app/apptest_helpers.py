"""AppTest helpers for the dashboard tests: open the app on a page, switch models, read charts.

Not named conftest.py: the test modules import these helpers by module name, and a second
``conftest`` module elsewhere under tests/ (tests/probes/sae/) would shadow this one when both
directories are collected in one pytest call."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"
TIMEOUT = 120  # seconds per script run: the first run imports torch and loads a model on CPU


def open_app(page: str | None = None, model: str | None = None):
    """An AppTest of ``app/main.py`` after its first run, on ``page`` (a file under app/views/,
    e.g. "heads") with zoo model ``model`` chosen in the sidebar."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT).run()
    if model is not None:
        at.selectbox(key="w_zoo_name").set_value(model).run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    return at


def no_problem(at) -> None:
    """No traceback and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]  # a message, never a traceback
    return [e.value for e in at.error]


def charts(at) -> list[dict]:
    """The plotly figures on the page (as dicts)."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def keyed_charts(at) -> dict[str, dict]:
    """``{element key: figure}`` of the plotly charts drawn with a ``key=``."""
    out = {}
    for c in at.get("plotly_chart"):
        key = c.proto.id.split("-", 2)[-1] if c.proto.id.startswith("$$ID-") else c.proto.id
        out[key] = json.loads(c.proto.spec)
    return out


def figure_text(fig: dict) -> str:
    """Title and subplot titles (annotations) of a figure, joined."""
    layout = fig.get("layout", {})
    title = layout.get("title", {})
    parts = [title.get("text", "") if isinstance(title, dict) else str(title)]
    parts += [a.get("text", "") for a in layout.get("annotations", [])]
    return " | ".join(p for p in parts if p)


def chart_titles(at) -> list[str]:
    return [figure_text(fig) for fig in charts(at)]


def iframes(at) -> list[str]:
    """srcdoc of every st.iframe (the token-hover views)."""
    return [f.proto.srcdoc for f in at.get("iframe")]


def download_keys(at) -> set[str]:
    """The keys of the download buttons on the page (``dl_<figure key>_<file name>``, app/show.py)."""
    out = set()
    for d in at.get("download_button"):
        i = d.proto.id
        out.add(i[i.index("dl_"):] if "dl_" in i else i)
    return out


def method_cited(at) -> str:
    """The page's "what am I looking at" line (app/show.py ``method_line``), or ''."""
    return next((c.value for c in at.caption if c.value.startswith("**What am I looking at?**")), "")
