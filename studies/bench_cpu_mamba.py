"""Benchmark: seqlens' Mamba forward vs Hugging Face ``MambaForCausalLM`` on CPU.

Both models hold identical weights (ours is converted from the HF one with ``from_hf``). HF runs
its PyTorch fallback (``slow_forward``: it materialises ``exp(ΔA)`` and ``ΔBu`` as
``[B, D, L, N]`` tensors); ours runs the chunked time-major scan. Runs alternate in one process;
we print median wall times, their ratio, and the peak tensor memory / largest allocation of each
(measured in separate, untimed runs with :class:`seqlens.memory.TensorMemoryTracker`).

    python -m seqlens.studies.bench_cpu_mamba [--lengths 1024 4096] [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from seqlens.memory import TensorMemoryTracker


def build_pair(d_model: int, d_state: int, n_layers: int, vocab: int, seed: int):
    """A random HF Mamba and its seqlens conversion (same weights), both in eval mode."""
    from transformers import MambaConfig, MambaForCausalLM

    from seqlens.models.hf import from_hf

    torch.manual_seed(seed)
    cfg = MambaConfig(hidden_size=d_model, state_size=d_state, expand=2, num_hidden_layers=n_layers,
                      vocab_size=vocab, conv_kernel=4, use_cache=False)
    hf = MambaForCausalLM(cfg).eval()
    return hf, from_hf(hf).eval()


def time_once(fn, tokens: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(tokens)
    return time.perf_counter() - start


def peak_memory(fn, tokens: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    with TensorMemoryTracker() as mem:
        fn(tokens)
    return mem.report.peak_bytes, mem.report.largest_shape


def bench_length(hf, ours, length: int, repeats: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, ours.cfg.vocab_size, (1, length), generator=g)
    run_hf = lambda t: hf(t, use_cache=False).logits  # noqa: E731
    run_ours = ours.forward
    diff = (run_hf(tokens) - run_ours(tokens)).abs().max().item()  # also the warm-up run
    t_hf, t_ours = [], []
    for _ in range(repeats):  # alternate so drift in machine load hits both equally
        t_hf.append(time_once(run_hf, tokens))
        t_ours.append(time_once(run_ours, tokens))
    mem_hf, big_hf = peak_memory(run_hf, tokens)
    mem_ours, big_ours = peak_memory(run_ours, tokens)
    D, N = ours.cfg.d_inner, ours.cfg.d_state
    return {
        "L": length, "hf_s": statistics.median(t_hf), "ours_s": statistics.median(t_ours),
        "speedup": statistics.median(t_hf) / statistics.median(t_ours),
        "hf_peak_MiB": mem_hf / 2**20, "ours_peak_MiB": mem_ours / 2**20,
        "hf_largest": list(big_hf), "ours_largest": list(big_ours),
        "ours_allocates_BDLN": _numel(big_ours) >= D * length * N,
        "max_abs_logit_diff": diff,
    }


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def table(rows: list[dict]) -> str:
    lines = ["| L | HF slow path (s) | seqlens (s) | speed-up | HF peak (MiB) | seqlens peak (MiB) | max logit diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['L']} | {r['hf_s']:.2f} | {r['ours_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['hf_peak_MiB']:.0f} | {r['ours_peak_MiB']:.0f} | {r['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write metrics.json here")
    a = p.parse_args(argv)
    with torch.no_grad():  # scoped: the CLI may run more work in this process afterwards
        return _run(a)


def _run(a: argparse.Namespace) -> int:
    hf, ours = build_pair(a.d_model, a.d_state, a.layers, a.vocab, a.seed)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"Mamba d_model={a.d_model} d_inner={ours.cfg.d_inner} N={a.d_state} layers={a.layers} "
          f"vocab={a.vocab} B=1, fp32, {machine}, torch {torch.__version__}")
    rows = []
    for length in a.lengths:
        rows.append(bench_length(hf, ours, length, a.repeats, a.seed))
        r = rows[-1]
        print(f"L={length}: HF {r['hf_s']:.3f}s  seqlens {r['ours_s']:.3f}s  speed-up {r['speedup']:.2f}x  "
              f"peak {r['hf_peak_MiB']:.0f} vs {r['ours_peak_MiB']:.0f} MiB  largest tensor HF "
              f"{r['hf_largest']} ours {r['ours_largest']}", flush=True)
    print(table(rows))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
