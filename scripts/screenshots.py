#!/usr/bin/env python3
"""Screenshot pages of the seqlens dashboard in headless Chromium, on a chosen model, after
pressing the page's buttons.

    python scripts/screenshots.py [--out screenshots] [--model text-mamba] [--page heads --page sinks]
                                  [--actions "Run finders" "Run causal check"] [--window-only]

Starts ``streamlit run app/main.py --server.headless true --server.port PORT``, waits until the
server answers its health check, then starts ``chromium --headless --no-sandbox --disable-gpu
--window-size=1400,1000`` and, for each page (addressed by its URL path, ``?model=NAME`` choosing
the zoo organism), loads it, waits until Streamlit has finished running the page (no "Running"
status, no skeletons, plotly charts drawn, the page unchanged for a moment), presses the page's
buttons (``--actions``; by default :data:`ACTIONS`, e.g. "Run finders" then "Run causal check"
on Heads) waiting for each, and saves ``OUT/<page>.png`` of the whole page (``--window-only``:
the window); then it stops the browser and the server. Each page's time is printed.

Why not ``chromium --screenshot --virtual-time-budget=...``: a Streamlit page is drawn from
messages on a websocket after the script has run on the server, and virtual time does not wait for
them, so those screenshots show an empty "Running" page. The browser is driven instead over the
Chrome DevTools protocol on localhost (the websocket client is the ``websockets`` package, which
Streamlit's server installs). ``tests/app/test_browser.py`` drives the app with the same
:class:`Browser`.

Needs Chromium (Debian: ``apt-get install chromium``). Nothing is downloaded; the app and the
browser only talk over localhost. Exit status 0 when every page was written, 1 when a page failed,
2 when Chromium or the server is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "main.py"
PAGES = {"model": "", "attention": "attention", "heads": "heads", "sinks": "sinks", "states": "states",
         "features": "features", "attribution": "attribution", "compare": "compare",
         "studies": "studies"}  # file stem -> URL path
# buttons pressed, in order, before a page's screenshot (analyses that run on request); a button
# that is absent or disabled on the model is skipped
ACTIONS = {"heads": ["Run finders", "Run causal check"], "sinks": ["Run calibration"],
           "states": ["Run collapse probe"], "attribution": ["Run token flipping"], "compare": ["Compare"]}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(explicit: str | None) -> str | None:
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


READY_JS = """(() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  if (!main || main.children.length === 0) return "no-app";
  if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]'))
    return "running";
  if (document.querySelector('[data-testid="stSkeleton"], [data-stale="true"]')) return "loading";
  for (const chart of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
    if (chart.offsetParent !== null && !chart.querySelector(".main-svg")) return "plotting";
  return "ready:" + main.innerText.length + ":" + main.querySelectorAll("*").length;
})()"""
CLICK_JS = """(() => {
  const b = [...document.querySelectorAll('[data-testid="stMain"] button, [data-testid="stMain"] [role="tab"]')]
    .find((x) => x.innerText.trim() === %s);
  if (!b) return "absent";
  if (b.disabled) return "disabled";
  b.scrollIntoView({block: "center"});
  const r = b.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})()"""
NAV_JS = r"""(() => {
  const a = [...document.querySelectorAll('[data-testid="stSidebarNavLink"]')]
    .find((x) => new URL(x.href).pathname.replace(/^\//, "") === %s);
  if (a) a.click();
  return !!a;
})()"""
SELECT_BOX_JS = """(() => {
  const box = [...document.querySelectorAll('[data-testid="stSidebar"] [data-testid="stSelectbox"]')]
    .find((x) => x.innerText.includes(%s));
  const input = box && box.querySelector("input");
  if (!input) return null;
  const r = input.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})()"""
SELECTED_JS = """(() => {
  const box = [...document.querySelectorAll('[data-testid="stSidebar"] [data-testid="stSelectbox"]')]
    .find((x) => x.innerText.includes(%s));
  const input = box && box.querySelector("input");
  if (input && %s) input.select();  // typing then replaces the shown value
  return input ? input.value : "";
})()"""
# What a test asserts on: tracebacks, error messages, and every plotly chart (drawn: an SVG with
# at least one trace or heatmap in it; charts in hidden tabs are listed as not visible).
REPORT_JS = """(() => {
  const texts = (sel) => [...document.querySelectorAll(sel)].map((e) => e.innerText.trim().slice(0, 400));
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].map((c) => ({
    visible: c.offsetParent !== null,
    svg: !!c.querySelector(".main-svg"),
    marks: c.querySelectorAll("g.trace, g.hm, .heatmaplayer image, g.imagelayer image").length,
    title: (c.querySelector(".gtitle") || {}).textContent || "",
  }));
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  return {exceptions: texts('[data-testid="stException"]'), errors: texts('[data-testid="stAlertContentError"]'),
          charts, title: h1 ? h1.innerText : "", text: (document.querySelector('[data-testid="stMain"]') || {}).innerText || ""};
})()"""
SCROLL_HEIGHT_JS = """(() => {
  const m = document.querySelector('[data-testid="stMain"]');
  return Math.max(m ? m.scrollHeight : 0, document.documentElement.scrollHeight);
})()"""


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page target)."""

    def __init__(self, executable: str, size: str, profile: Path):
        self.port = free_port()
        self.width, self.height = (int(v) for v in size.split(","))
        cmd = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", f"--window-size={size}", f"--remote-debugging-port={self.port}",
               f"--user-data-dir={profile}", "--no-first-run", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.ws = None
        self.next_id = 0
        self.settled_at = time.monotonic()

    async def connect(self, timeout: float = 30.0) -> None:
        try:
            from websockets.asyncio.client import connect as ws_connect
        except ImportError:  # websockets < 13
            from websockets import connect as ws_connect

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.3)
        self.ws = await ws_connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        await self.call("Page.enable")

    async def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            data = json.loads(await self.ws.recv())
            if data.get("id") == my_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def settle(self, timeout: float, settle: float) -> str:
        """Wait until the page is drawn and unchanged for ``settle`` seconds; the last state."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            state = await self.evaluate(READY_JS)
            if state != last:
                last, since = state, time.monotonic()
            elif str(state).startswith("ready") and time.monotonic() - since >= settle:
                break
            await asyncio.sleep(0.25)
        self.settled_at = since  # when the page last changed: its time to render, without the wait
        return str(last)

    async def goto(self, url: str, timeout: float, settle: float) -> str:
        """Load ``url`` (a new Streamlit session) at the window size and wait until it settles."""
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(1.0)
        return await self.settle(timeout, settle)

    async def press(self, label: str, timeout: float, settle: float) -> tuple[str, str]:
        """Press the main area's button (or tab) labelled ``label`` and wait until the page settles:
        ``(what happened: clicked / absent / disabled, the last readiness state)``."""
        where = await self.evaluate(CLICK_JS % json.dumps(label))
        if isinstance(where, str):
            return where, "ready"
        await self.click(*where)
        await asyncio.sleep(1.0)
        return "clicked", await self.settle(timeout, settle)

    async def click(self, x: float, y: float) -> None:
        """A real mouse click at ``(x, y)`` (tabs and comboboxes ignore a scripted ``.click()``)."""
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def open_page(self, page: str, timeout: float, settle: float) -> str:
        """Follow the sidebar's link to ``page`` (a key of :data:`PAGES`; the same session, as a
        user does)."""
        if not await self.evaluate(NAV_JS % json.dumps(PAGES[page])):
            raise RuntimeError(f"no sidebar link to page {page!r}")
        await asyncio.sleep(1.0)
        return await self.settle(timeout, settle)

    async def choose(self, select_label: str, option: str, timeout: float, settle: float) -> str:
        """Type ``option`` into the sidebar selectbox labelled ``select_label`` and press Enter."""
        where = await self.evaluate(SELECT_BOX_JS % json.dumps(select_label))
        if not where:
            raise RuntimeError(f"no sidebar selectbox {select_label!r}")
        await self.click(*where)  # a real click opens the combobox
        await asyncio.sleep(0.3)
        await self.evaluate(SELECTED_JS % (json.dumps(select_label), "true"))
        await self.call("Input.insertText", text=option)
        await asyncio.sleep(0.5)
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                            windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)
        await asyncio.sleep(1.0)
        state = await self.settle(timeout, settle)
        if await self.evaluate(SELECTED_JS % (json.dumps(select_label), "false")) != option:
            raise RuntimeError(f"selectbox {select_label!r} did not take {option!r}")
        return state

    async def report(self) -> dict:
        return await self.evaluate(REPORT_JS)

    async def screenshot(self, out: Path, full_page: bool = True, scale: float = 1.0) -> None:
        """Save a PNG of the window, or (``full_page``) of the whole page, at most 8000 px high;
        ``scale`` < 1 shrinks the image (small PNGs for the docs)."""
        height = self.height
        if full_page:
            height = max(min(int(await self.evaluate(SCROLL_HEIGHT_JS) or self.height), 8000), self.height)
            await self.call("Emulation.setDeviceMetricsOverride", width=self.width,
                            height=height, deviceScaleFactor=1, mobile=False)
            await asyncio.sleep(1.5)  # let plotly re-lay out at the new size
        clip = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": scale}
        shot = await self.call("Page.captureScreenshot", format="png", clip=clip)
        out.write_bytes(base64.b64decode(shot["data"]))
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def page_url(base: str, page: str, model: str | None) -> str:
    return base + PAGES[page] + (f"?model={urllib.parse.quote(model)}" if model else "")


async def shoot_page(browser: Browser, url: str, target: Path, actions: list[str], timeout: float,
                     settle: float, full_page: bool, scale: float = 1.0) -> str:
    """One page: load, press ``actions`` in order, screenshot; the last readiness state."""
    state = await browser.goto(url, timeout, settle)
    for label in actions:
        what, state = await browser.press(label, timeout, settle)
        if what != "clicked":
            print(f"     {label!r}: {what}")
    await browser.screenshot(target, full_page, scale)
    return state


async def shoot_pages(browser: Browser, base: str, pages: list[str], out: Path, timeout: float,
                      settle: float, full_page: bool, model: str | None = None,
                      actions: list[str] | None = None, scale: float = 1.0) -> bool:
    await browser.connect()
    try:
        await browser.goto(page_url(base, "model", model), timeout, settle)  # imports, model load
        ok = True
        for page in pages:
            target = out / f"{page}.png"
            t0 = time.monotonic()
            state = await shoot_page(browser, page_url(base, page, model), target,
                                     ACTIONS.get(page, []) if actions is None else actions, timeout, settle,
                                     full_page, scale)
            good = state.startswith("ready") and target.is_file()
            print(f"{'ok  ' if good else 'FAIL'} {target} ({time.monotonic() - t0:.1f} s, {state.split(':')[0]})")
            ok &= good
        return ok
    finally:
        await browser.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="output folder (default ./screenshots)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    parser.add_argument("--model", default=None, help="zoo organism to open (default: the app's, induction-attn2)")
    parser.add_argument("--page", "--pages", dest="pages", action="extend", nargs="+", choices=list(PAGES),
                        help="page(s) to shoot (repeatable; default: every page)")
    parser.add_argument("--actions", nargs="*", default=None, metavar="LABEL",
                        help="buttons to press on each page, in order (default: each page's own, e.g. "
                             "'Run finders' 'Run causal check' on Heads; no LABEL: press nothing)")
    parser.add_argument("--window-only", action="store_true", help="capture the window, not the whole page")
    parser.add_argument("--full-page", action="store_true", help="(the default) capture the whole page")
    parser.add_argument("--page-timeout", type=float, default=300.0, help="seconds to wait for a page to finish")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds a page must stay unchanged")
    parser.add_argument("--size", default="1400,1000", help="window size W,H (default 1400,1000)")
    parser.add_argument("--scale", type=float, default=1.0, help="image scale (e.g. 0.6 for the docs' PNGs)")
    parser.add_argument("--palette", action="store_true",
                        help="re-save each PNG with a 256-colour palette (about 3x smaller; Pillow, a Streamlit "
                             "dependency)")
    parser.add_argument("--browser", default=None, help="Chromium executable (default: found on PATH)")
    parser.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)

    chromium = find_browser(args.browser)
    if chromium is None:
        print("screenshots: no Chromium found (Debian: apt-get install chromium); pass --browser", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    log = Path(tempfile.gettempdir()) / f"seqlens-screenshots-{port}.log"  # not in OUT (docs/img stays clean)
    proc = start_server(port, log)
    try:
        if not wait_healthy(port, proc, args.server_timeout):
            print(f"screenshots: the Streamlit server did not answer on port {port}; see {log}", file=sys.stderr)
            return 2
        base = f"http://127.0.0.1:{port}/"
        with tempfile.TemporaryDirectory(prefix="seqlens-chromium-") as profile:
            browser = Browser(chromium, args.size, Path(profile))
            try:
                ok = asyncio.run(shoot_pages(browser, base, args.pages or list(PAGES), out, args.page_timeout,
                                             args.settle, not args.window_only, args.model, args.actions,
                                             args.scale))
            finally:
                browser.close()
        if args.palette:
            for page in args.pages or list(PAGES):
                palette_png(out / f"{page}.png")
        return 0 if ok else 1
    finally:
        stop_server(proc)


def palette_png(path: Path) -> None:
    """Re-save ``path`` with a 256-colour palette (screenshots have few colours: ~3x smaller)."""
    from PIL import Image

    if path.is_file():
        Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
