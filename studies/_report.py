"""The scaffolding every paper study shares: arguments, organisms by name, report.html, metrics.json.

A study module defines ``CLAIM`` (the paper's claim, one sentence) and ``main(argv) -> int``; it
parses its arguments with :func:`parser` (``--smoke``, ``--out``, ``--seed`` plus its own), loads
zoo organisms with :meth:`Study.organism` (a missing one is recorded, never an error: the zoo is
retrained independently and a study picks up better organisms by name), adds figures and text as
it goes and ends with :meth:`Study.finish`, which prints the verdict and writes

- ``metrics.json``: ``study``, ``paper``, ``claim``, ``measured`` (the numbers), ``reproduced``
  (True / False, or None when nothing could be measured), ``verdict`` (one sentence),
  ``organisms`` (used) and ``missing`` (wanted but not built), ``notes``, ``smoke``, ``seed``,
  ``settings``, ``seconds``, ``date`` and the library ``version``;
- ``report.html``: the claim, the verdict, the notes and every figure (plotly.js inlined once, so
  the page works offline).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from seqlens.result import to_jsonable
from seqlens.version import __version__

METRICS_FILE, REPORT_FILE = "metrics.json", "report.html"


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """``python -m seqlens.studies.NAME``'s parser with the shared ``--smoke``, ``--out``, ``--seed``."""
    p = argparse.ArgumentParser(prog=f"python -m seqlens.studies.{name}",
                                description=(doc or name).strip().split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings that finish in seconds (CI); "
                   "a smoke run checks the plumbing, its numbers are not a measurement")
    p.add_argument("--out", type=Path, default=None, help="folder for report.html and metrics.json")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    return p


def json_safe(value: Any) -> Any:
    """``to_jsonable`` with non-finite floats as None (strict JSON has no NaN)."""
    value = to_jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


class Study:
    """One run of a study: organisms used / missing, figures, notes; :meth:`finish` writes the files."""

    def __init__(self, name: str, paper: str, claim: str, args: argparse.Namespace) -> None:
        self.name, self.paper, self.claim, self.args = name, paper, claim, args
        self.used: list[str] = []
        self.missing: list[str] = []
        self.notes: list[str] = []
        self.figures: list[Any] = []
        self.t0 = time.perf_counter()
        if args.smoke:
            self.note("smoke run: tiny settings that check the plumbing; its numbers are not a measurement")

    def organism(self, name: str):
        """The zoo organism ``name``, or None (recorded in ``missing``) when it is not built."""
        import seqlens
        from seqlens.models import zoo

        if name not in zoo.names():
            self.missing.append(name)
            return None
        self.used.append(name)
        return seqlens.load(name)

    def organisms(self, names: list[str]):
        """``(name, model)`` for each organism of ``names`` that is built (the rest go to ``missing``)."""
        for name in names:
            model = self.organism(name)
            if model is not None:
                yield name, model

    def figures_of(self, name: str, figs: list[Any]) -> None:
        """Add an organism's figures, their titles prefixed with its name."""
        for f in figs:
            self.figure(f, f"{name}: {f.layout.title.text or ''}")

    def measure_each(self, names: list[str], measure: Callable[[Any], tuple[Any, list[Any]]],
                     summary: Callable[[str, Any], str]) -> dict[str, Any]:
        """``{name: result}`` of ``measure(model) -> (result, figures)`` on each built organism of
        ``names``, adding its figures and logging ``summary(name, result)``."""
        results = {}
        for name, model in self.organisms(names):
            results[name], figs = measure(model)
            self.figures_of(name, figs)
            self.log(summary(name, results[name]))
        return results

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def log(self, text: str) -> None:
        print(text, flush=True)

    def figure(self, fig, title: str | None = None) -> None:
        if title is not None:
            fig.update_layout(title=title)
        self.figures.append(fig)

    def finish(self, measured: dict[str, Any], reproduced: bool | None, verdict: str,
               **extra: Any) -> dict[str, Any]:
        """Print the verdict; with ``--out`` write metrics.json and report.html. Returns the metrics."""
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}
        metrics = json_safe({
            "study": self.name, "paper": self.paper, "claim": self.claim, "measured": measured,
            "reproduced": reproduced, "verdict": verdict, "organisms": self.used,
            "missing": sorted(set(self.missing)), "notes": self.notes, "smoke": bool(self.args.smoke),
            "seed": self.args.seed, "settings": settings, "seconds": round(time.perf_counter() - self.t0, 1),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "version": __version__, **extra})
        label = {True: "reproduced", False: "not reproduced", None: "not measured"}[reproduced]
        print(f"{self.name}: {label}: {verdict}", flush=True)
        if self.args.out is not None:
            out = Path(self.args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False))
            (out / REPORT_FILE).write_text(self.html(metrics, label))
        return metrics

    def html(self, metrics: dict[str, Any], label: str) -> str:
        """The report page: claim, verdict, notes, the measured numbers and every figure."""
        e = html.escape
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        missing = f"<p><b>Organisms missing:</b> {e(', '.join(metrics['missing']))}</p>" if metrics["missing"] else ""
        figs = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(self.figures)]
        return ("<html><head><meta charset='utf-8'><title>seqlens study: " + e(self.name) + "</title></head><body>"
                f"<h1>{e(self.name)}</h1><p><b>Paper:</b> {e(self.paper)}</p><p><b>Claim:</b> {e(self.claim)}</p>"
                f"<p><b>Result:</b> {e(label)}: {e(metrics['verdict'])}</p>{missing}<ul>{notes}</ul>"
                f"<pre>{e(json.dumps(metrics['measured'], indent=1)[:20000])}</pre>"
                f"<p>organisms: {e(', '.join(self.used))}; {metrics['date']}; seqlens {__version__}</p>"
                + "\n".join(figs) + "</body></html>")
