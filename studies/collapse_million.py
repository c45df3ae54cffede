"""Study: one million tokens through a zoo organism with :func:`seqlens.probes.collapse.state_collapse`.

Shows that the collapse probe runs in memory that does not grow with length: it prints the wall
time and throughput, the process RSS sampled during the run (start, 10%, end, peak) and the peak
tensor memory (:class:`seqlens.memory.TensorMemoryTracker`, in separate runs because tracking
slows execution) of a short and of the full stream, then the collapse verdict.

    python -m seqlens.studies.collapse_million [--model passkey-mamba-n16] [--tokens 1000000]
        [--source task] [--chunk 128] [--short 16384] [--no-tracker] [--out DIR]

With ``--out`` it writes ``metrics.json`` and ``report.html`` (the CollapseResult's figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import torch


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the RSS every ``every`` seconds in a background thread."""

    def __init__(self, every: float = 0.25):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), rss_bytes()))


def tracked_peak(model, source: str, n: int, chunk: int) -> tuple[int, float]:
    """Peak live tensor bytes of one probe run of ``n`` tokens, and its wall time (slowed by
    the tracker)."""
    from seqlens.memory import TensorMemoryTracker
    from seqlens.probes.collapse import state_collapse

    t0 = time.perf_counter()
    with TensorMemoryTracker() as mem:
        state_collapse(model, source, n_tokens=n, chunk=chunk, progress=False)
    return mem.report.peak_bytes, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="passkey-mamba-n16")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--source", default="task", choices=["newlines", "repeat", "task"])
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--short", type=int, default=16_384, help="length of the short tracked run")
    p.add_argument("--no-tracker", action="store_true", help="skip the TensorMemoryTracker runs")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    with torch.no_grad():
        return _run(a)


def _run(a: argparse.Namespace) -> int:
    import seqlens
    from seqlens.probes.collapse import state_collapse

    model = seqlens.load(a.model).eval()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{a.model}: {a.tokens:,} tokens of {a.source!r}, chunk {a.chunk}; {machine}", flush=True)
    state_collapse(model, a.source, n_tokens=4 * a.chunk, chunk=a.chunk, progress=False)  # warm-up
    with RssSampler() as rss:
        t0 = time.perf_counter()
        r = state_collapse(model, a.source, n_tokens=a.tokens, chunk=a.chunk, progress=a.progress)
        wall = time.perf_counter() - t0
    times = [t - rss.samples[0][0] for t, _ in rss.samples]
    mem = [m for _, m in rss.samples]
    at10 = mem[min(range(len(times)), key=lambda i: abs(times[i] - 0.1 * wall))]
    metrics = {
        "model": a.model, "source": a.source, "tokens": a.tokens, "chunk": a.chunk, "machine": machine,
        "wall_s": wall, "tokens_per_s": a.tokens / wall,
        "rss_start_MiB": mem[0] / 2**20, "rss_10pct_MiB": at10 / 2**20, "rss_end_MiB": mem[-1] / 2**20,
        "rss_peak_MiB": max(mem) / 2**20, "state_bytes": model.init_state(1).nbytes(),
        "collapsed": r.collapsed, "onset": r.onset, "loss_in": r.loss_in, "loss_beyond": r.loss_beyond,
        "max_rms_ratio": float(r.rms_ratio.max()), "train_len": r.train_len,
        "summary_MiB": (r.state.numel() + r.cos.numel() + r.decay.numel()) * 4 / 2**20,
    }
    print(f"time: {wall:.1f} s ({metrics['tokens_per_s']:,.0f} tokens/s)")
    print(f"RSS: start {metrics['rss_start_MiB']:.1f} MiB, at 10% {metrics['rss_10pct_MiB']:.1f} MiB, "
          f"end {metrics['rss_end_MiB']:.1f} MiB, peak {metrics['rss_peak_MiB']:.1f} MiB "
          f"(recurrent state {metrics['state_bytes'] / 1024:.1f} KiB; the per-chunk summaries the result keeps: "
          f"{metrics['summary_MiB']:.1f} MiB)", flush=True)
    if not a.no_tracker:
        short, t_short = tracked_peak(model, a.source, a.short, a.chunk)
        full, t_full = tracked_peak(model, a.source, a.tokens, a.chunk)
        metrics.update({"tensor_peak_short_KiB": short / 1024, "tensor_peak_full_KiB": full / 1024,
                        "short_tokens": a.short, "tracked_wall_s": t_full})
        print(f"peak tensor memory (TensorMemoryTracker): {short / 1024:.1f} KiB at {a.short:,} tokens, "
              f"{full / 1024:.1f} KiB at {a.tokens:,} tokens")
    print(f"verdict: collapsed={r.collapsed} onset={r.onset} loss_in={r.loss_in:.3f} "
          f"loss_beyond={r.loss_beyond:.3f} max RMS ratio {metrics['max_rms_ratio']:.2f} (train_len {r.train_len})")
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        r.figure().write_html(str(a.out / "report.html"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
