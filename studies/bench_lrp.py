"""Benchmark: one LRP ``attribute`` call (the model's own rule set, "auto") against plain gradient ×
input ("gxi") on one zoo organism, and their peak tensor memory.

The LRP rule sets run as a modified forward and one backward (docs/lrp.md), so one call should
cost about what "gxi" costs (one forward + one backward). For Mamba the check is also that no
``[B, D, L, N]`` tensor (d_inner × sequence × state) is ever allocated: the largest single
allocation seen by :class:`seqlens.memory.TensorMemoryTracker` must be smaller.

    seqlens bench lrp [--model text-mamba] [--seq-len 1024] [--batch 1] [--repeats 5] [--smoke] [--out DIR]

Timings are medians of ``--repeats`` alternating runs after a warm-up; memory is measured in a
separate run (the tracker slows execution). Prints a table and writes ``metrics.json`` to ``--out``
(default ``runs/bench_lrp``). ``--smoke`` (L 64, 1 repeat) checks that the script works; it
measures nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import seqlens
from seqlens.circuits.lrp import attribute
from seqlens.memory import TensorMemoryTracker
from seqlens.studies.bench_sae import medians

METHODS = ("auto", "gxi")


def bdln_bytes(model, batch: int, seq_len: int) -> int | None:
    """Bytes of one float32 tensor holding layer 0's recurrent state at every step, ``[B, L, *state]``
    (for Mamba the ``[B, D, L, N]`` tensor a naive scan builds); None for a KV cache."""
    mixer = model.blocks[0].mixer
    spec = mixer.state_spec
    if spec is None or not spec.fixed_size:
        return None
    state = mixer.init_state(1, model.device, torch.float32)[spec.key]
    return batch * seq_len * state[0].numel() * 4


def memory(model, tokens: torch.Tensor, method: str) -> dict:
    """Peak live tensor bytes and the largest single allocation of one ``attribute`` call."""
    with TensorMemoryTracker() as mem:
        attribute(model, tokens, method=method)
    r = mem.report
    return {"peak_bytes": r.peak_bytes, "largest_bytes": r.largest_bytes, "largest_shape": list(r.largest_shape)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seqlens bench lrp", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="text-mamba")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="L 64, 1 repeat: a check that the script runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench_lrp"))
    a = p.parse_args(argv)
    if a.smoke:
        a.seq_len, a.repeats = 64, 1
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    model = seqlens.load(a.model)
    tokens = torch.randint(0, model.cfg.vocab_size, (a.batch, a.seq_len), generator=torch.Generator().manual_seed(a.seed))
    method = {"auto": attribute(model, tokens[:, :8], method="auto").method, "gxi": "gxi"}
    times = medians({m: (lambda m=m: attribute(model, tokens, method=m)) for m in METHODS}, "cpu", a.repeats)
    mems = {m: memory(model, tokens, m) for m in METHODS}
    limit = bdln_bytes(model, a.batch, a.seq_len)
    rows = [{"method": method[m], "seconds": times[m], **mems[m]} for m in METHODS]
    metrics = {"model": a.model, "arch": model.cfg.arch, "seq_len": a.seq_len, "batch": a.batch, "repeats": a.repeats,
               "rows": rows, "ratio_lrp_over_gxi": times["auto"] / times["gxi"], "bdln_bytes": limit,
               "no_bdln_tensor": None if limit is None else all(r["largest_bytes"] < limit for r in rows),
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    print(f"{a.model} ({model.cfg.arch}), B={a.batch}, L={a.seq_len}, median of {a.repeats} alternating runs")
    print(f"{'method':<10} {'seconds':>9} {'peak MiB':>9} {'largest MiB':>12}  largest shape")
    for r in rows:
        print(f"{r['method']:<10} {r['seconds']:>9.4f} {r['peak_bytes'] / 2**20:>9.2f} "
              f"{r['largest_bytes'] / 2**20:>12.3f}  {tuple(r['largest_shape'])}")
    print(f"ratio {method['auto']} / gxi: {metrics['ratio_lrp_over_gxi']:.2f}")
    if limit is not None:
        print(f"[B, D, L, N] float32 = {limit / 2**20:.2f} MiB; largest allocation below it: {metrics['no_bdln_tensor']}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
