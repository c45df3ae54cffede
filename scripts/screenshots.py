#!/usr/bin/env python3
"""Screenshot every page of the seqlens dashboard in headless Chromium.

    python scripts/screenshots.py [--out screenshots] [--port 8765] [--full-page]

Starts ``streamlit run app/main.py --server.headless true --server.port PORT``, waits until the
server answers its health check, then starts ``chromium --headless --no-sandbox --disable-gpu
--window-size=1400,1000`` and, for each page (addressed by its URL path: ``/``, ``/attention``,
``/heads``, ``/sinks``, ``/states``, ``/attribution``), loads it, waits until Streamlit has finished running the page (no
"Running" status, no skeletons, plotly charts drawn, the page unchanged for a moment), presses
"Run finders" on the Heads page (finders run on request) and waits again, and saves
``OUT/<page>.png``; then stops the browser and the server.

Why not ``chromium --screenshot --virtual-time-budget=...``: a Streamlit page is drawn from
messages on a websocket after the script has run on the server, and virtual time does not wait for
them, so those screenshots show an empty "Running" page. The browser is driven instead over the
Chrome DevTools protocol on localhost (the websocket client is the ``websockets`` package, which Streamlit's server installs).

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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "main.py"
PAGES = {"model": "", "attention": "attention", "heads": "heads", "sinks": "sinks", "states": "states",
         "features": "features", "attribution": "attribution"}  # file stem -> URL path
CLICK = {"heads": "Run finders"}  # buttons pressed before the screenshot (finders run on request)
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
    if (!chart.querySelector(".main-svg")) return "plotting";
  return "ready:" + main.innerText.length + ":" + main.querySelectorAll("*").length;
})()"""
CLICK_JS = """(() => {
  const b = [...document.querySelectorAll("button")].find((x) => x.innerText.trim() === %s);
  if (b) b.click();
  return !!b;
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
        return str(last)

    async def shoot(self, url: str, out: Path, timeout: float, settle: float, full_page: bool,
                    click: str | None = None) -> str:
        """Load ``url``, wait until it settles (then press the button labelled ``click`` and wait
        again), save a PNG; returns the last readiness state ("ready:..." when it settled)."""
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(1.0)
        last = await self.settle(timeout, settle)
        if click:
            await self.evaluate(CLICK_JS % json.dumps(click))
            await asyncio.sleep(1.0)
            last = await self.settle(timeout, settle)
        if full_page:
            height = min(int(await self.evaluate(SCROLL_HEIGHT_JS) or self.height), 8000)
            await self.call("Emulation.setDeviceMetricsOverride", width=self.width,
                            height=max(height, self.height), deviceScaleFactor=1, mobile=False)
            await asyncio.sleep(1.0)  # let plotly re-lay out at the new size
        shot = await self.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        return last

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


async def shoot_pages(browser: Browser, base: str, pages: list[str], out: Path, timeout: float,
                      settle: float, full_page: bool) -> bool:
    await browser.connect()
    try:
        await browser.call("Page.enable")
        await browser.shoot(base, out / "_warmup.png", timeout, settle, False)  # imports, model load
        (out / "_warmup.png").unlink(missing_ok=True)
        ok = True
        for page in pages:
            target = out / f"{page}.png"
            t0 = time.monotonic()
            state = await browser.shoot(base + PAGES[page], target, timeout, settle, full_page, CLICK.get(page))
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
    parser.add_argument("--page-timeout", type=float, default=120.0, help="seconds to wait for a page to finish")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds a page must stay unchanged")
    parser.add_argument("--full-page", action="store_true", help="capture the whole page, not just the window")
    parser.add_argument("--size", default="1400,1000", help="window size W,H (default 1400,1000)")
    parser.add_argument("--pages", nargs="*", default=list(PAGES), choices=list(PAGES), help="pages to shoot")
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
    log = out / "streamlit.log"
    proc = start_server(port, log)
    try:
        if not wait_healthy(port, proc, args.server_timeout):
            print(f"screenshots: the Streamlit server did not answer on port {port}; see {log}", file=sys.stderr)
            return 2
        base = f"http://127.0.0.1:{port}/"
        with tempfile.TemporaryDirectory(prefix="seqlens-chromium-") as profile:
            browser = Browser(chromium, args.size, Path(profile))
            try:
                ok = asyncio.run(shoot_pages(browser, base, args.pages, out, args.page_timeout, args.settle,
                                             args.full_page))
            finally:
                browser.close()
        return 0 if ok else 1
    finally:
        stop_server(proc)


if __name__ == "__main__":
    raise SystemExit(main())
