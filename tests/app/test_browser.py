"""The dashboard in a real browser: ``seqlens app`` on a free local port, driven by headless
Chromium over the DevTools protocol (``scripts/screenshots.py``'s :class:`Browser`).

One browser session, as a user works: every page on the attention organism, then the model is
switched in the sidebar to a recurrent organism and every page again. On each page the run buttons
are pressed (:data:`ACTIONS`) and waited for; then no Streamlit exception or error message may be
in the DOM, and every plotly chart on screen must have drawn (an SVG holding a trace or heatmap),
at least :data:`MIN_CHARTS` of them. Each page's time to render and each button's time to settle
are printed (no timed assertion; docs/app.md records them).

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it). Without it the
module is skipped with that message. ``SEQLENS_BROWSER_MODELS=attn,recurrent`` picks the organisms
(default ``induction-attn2,mqar-gla``: small task organisms, a few minutes on two cores);
``SEQLENS_BROWSER_TIMES=FILE`` also writes the times as JSON.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODELS = os.environ.get("SEQLENS_BROWSER_MODELS", "induction-attn2,mqar-gla").split(",")
PAGES = ["model", "attention", "heads", "sinks", "states", "attribution", "features", "compare", "studies"]
# buttons (and tabs) pressed in order on each page; absent or disabled ones are reported, not pressed
ACTIONS = {
    "attention": ["Heatmaps"],
    "heads": ["Run finders", "Run causal check"],
    "states": ["Run collapse probe", "Capacity", "Run lag decoding", "Gates", "Run gate saturation"],
    "sinks": ["Run calibration"],
    "attribution": ["Run token flipping"],
    "compare": ["Compare"],
}
MIN_CHARTS = {"attention": 1, "heads": 11, "sinks": 1, "states": 1, "attribution": 2, "compare": 1}
TIMEOUT = 600.0  # seconds a page or a button may take before the test fails (a hang, not a speed check)
SETTLE = 1.5


def _driver():
    spec = importlib.util.spec_from_file_location("seqlens_screenshots", ROOT / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def session():
    """``(driver module, Browser, asyncio loop, base URL, times)``: one server, one browser tab."""
    drv = _driver()
    chromium = drv.find_browser(None)
    if chromium is None:
        message = "Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("SEQLENS_REQUIRE_BROWSER") == "1":  # .ci/run where apt exists: must not skip
            pytest.fail(message)
        pytest.skip(message)
    port = drv.free_port()
    with tempfile.TemporaryDirectory(prefix="seqlens-browser-") as tmp:
        log = Path(tmp) / "streamlit.log"
        proc = drv.start_server(port, log)
        browser = drv.Browser(chromium, "1400,1000", Path(tmp) / "profile")
        loop = asyncio.new_event_loop()
        try:
            assert drv.wait_healthy(port, proc, 180), log.read_text()[-3000:]
            loop.run_until_complete(browser.connect())
            base = f"http://127.0.0.1:{port}/"
            loop.run_until_complete(browser.goto(base + f"?model={MODELS[0]}", TIMEOUT, SETTLE))
            times: dict = {}
            yield drv, browser, loop, base, times
            if os.environ.get("SEQLENS_BROWSER_TIMES"):
                Path(os.environ["SEQLENS_BROWSER_TIMES"]).write_text(json.dumps(times, indent=1))
        finally:
            loop.run_until_complete(browser.disconnect())
            loop.close()
            browser.close()
            drv.stop_server(proc)


def _current_model(session) -> str:
    drv, browser, loop, *_ = session
    return loop.run_until_complete(browser.evaluate(drv.SELECTED_JS % (json.dumps("Organism"), "false")))


def _check(report: dict, where: str, min_charts: int = 0) -> None:
    assert not report["exceptions"], (where, report["exceptions"])
    assert not report["errors"], (where, report["errors"])
    shown = [c for c in report["charts"] if c["visible"]]
    blank = [c["title"] or f"chart {i}" for i, c in enumerate(shown) if not (c["svg"] and c["marks"] > 0)]
    assert not blank, (where, "plotly charts not drawn", blank)
    assert len(shown) >= min_charts, (where, f"{len(shown)} charts drawn, expected at least {min_charts}",
                                      [c["title"] for c in shown])


def _drawn(report: dict) -> set[str]:
    """Titles (or positions) of the charts drawn on screen."""
    return {c["title"] or f"chart {i}" for i, c in enumerate(report["charts"]) if c["visible"] and c["marks"]}


@pytest.mark.parametrize("model, page", [(m, p) for m in MODELS for p in PAGES])
def test_page_in_chromium(session, model, page, capsys):
    drv, browser, loop, base, times = session
    run = loop.run_until_complete
    if _current_model(session) != model:  # switch the organism in the sidebar, as a user does
        run(browser.choose("Organism", model, TIMEOUT, SETTLE))
    t0 = time.monotonic()
    state = run(browser.open_page(page, TIMEOUT, SETTLE))
    assert state.startswith("ready"), (model, page, state)
    line = [f"{model:>16} {page:<12} render {browser.settled_at - t0:5.1f} s"]
    times.setdefault(model, {})[page] = {"render_s": round(browser.settled_at - t0, 1)}
    report = run(browser.report())
    assert model in report["text"] or page != "model", report["title"]
    _check(report, f"{model} /{page} before its buttons", 0)
    drawn = _drawn(report)
    for label in ACTIONS.get(page, []):
        t1 = time.monotonic()
        what, state = run(browser.press(label, TIMEOUT, SETTLE))
        assert state.startswith("ready"), (model, page, label, state)
        took = browser.settled_at - t1 if what == "clicked" else None
        times[model][page][label] = None if took is None else round(took, 1)
        line.append(f"{label!r} {took:.1f} s" if took is not None else f"{label!r} {what}")
        report = run(browser.report())
        _check(report, f"{model} /{page} after {label!r}", 0)
        drawn |= _drawn(report)  # tabs hide earlier charts: count every chart seen drawn
    assert len(drawn) >= MIN_CHARTS.get(page, 0), (model, page, f"{len(drawn)} charts drawn", sorted(drawn))
    with capsys.disabled():
        print("\n  " + " · ".join(line), file=sys.stderr)
