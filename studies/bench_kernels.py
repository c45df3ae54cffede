"""Benchmark: seqlens' kernels against named baselines, side by side in one process.

On a CUDA machine (``--device cuda``, the default when one is present) every case is timed with
``triton.testing.do_bench`` (median ms) and compared with:

* selective scan: mamba-ssm's ``selective_scan_fn`` when importable, else our chunked PyTorch
  scan under ``torch.compile`` (the reference itself is a Python loop over time, which
  ``torch.compile`` would unroll L times); plus the fraction of the memory/exp roofline reached
  (bytes moved at the bandwidth of a device-to-device copy measured in the same run; exps at
  16 per SM per clock) and the cost of taps every 64 steps;
* gated linear attention / simple GLA / the elementwise recurrence: flash-linear-attention's
  ``chunk_gla``, ``chunk_simple_gla`` and ``chunk_hgrn`` when ``fla`` is importable;
* attention statistics: PyTorch SDPA's forward at L = 16k (which returns no statistics), and a
  run at L = 128k with its peak memory.

On CPU (``--device cpu``) it compares each operation's default CPU backend with its plain
reference loop ("dispatch vs naive"), timings as medians of alternating runs, and the peak tensor
memory of both (``seqlens.memory.TensorMemoryTracker``). ``--smoke`` runs the GPU suite's code on
tiny shapes through whatever backend is available (the Triton interpreter on CPU): a check that
the script works, not a measurement.

    python -m seqlens.studies.bench_kernels [--device cpu|cuda] [--smoke] [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from seqlens.memory import TensorMemoryTracker
from seqlens.models import kernels as K

Row = dict[str, object]


# ----------------------------------------------------------------------------- timing


def cpu_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function; runs alternate so load drift hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def gpu_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds from ``triton.testing.do_bench`` (which warms up, flushes L2 and syncs)."""
    from triton.testing import do_bench

    return {name: do_bench(fn, return_mode="median") / 1e3 for name, fn in fns.items()}


def peak_bytes(fn: Callable[[], object]) -> int:
    with TensorMemoryTracker() as mem:
        fn()
    return mem.report.peak_bytes


def optional(module: str, attr: str) -> Callable | None:
    """``module.attr`` if the package imports, else None (baselines are optional installs)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:
        return None


# ----------------------------------------------------------------------------- inputs


def scan_inputs(B: int, D: int, L: int, N: int, device: str, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    return {"u": r(B, D, L).to(dtype), "delta": (r(B, D, L) - 2).to(dtype),
            "A": -torch.rand(D, N, generator=g, device=device) * N, "B": r(B, N, L).to(dtype),
            "C": r(B, N, L).to(dtype), "D": r(D), "z": r(B, D, L).to(dtype),
            "delta_bias": r(D) * 0.1, "delta_softplus": True}


def gla_inputs(B: int, T: int, H: int, dk: int, dv: int, device: str, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    log_g = torch.nn.functional.logsigmoid(r(B, T, H, dk) + 3) / 16  # fla's GLA gate range
    return {"q": r(B, T, H, dk).to(dtype), "k": r(B, T, H, dk).to(dtype), "v": r(B, T, H, dv).to(dtype),
            "g": log_g.to(dtype)}


def recurrence_inputs(B: int, L: int, D: int, device: str, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    log_a = torch.nn.functional.logsigmoid(torch.randn(B, L, D, generator=g, device=device) + 2)
    # fla's hgrn takes log decays, ours decays: both precomputed, so neither timing pays an exp
    return {"log_a": log_a.to(dtype), "a": log_a.exp().to(dtype),
            "b": torch.randn(B, L, D, generator=g, device=device).to(dtype)}


def attention_inputs(B: int, H: int, L: int, d: int, device: str, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    return {n: torch.randn(B, H, L, d, generator=g, device=device).to(dtype) for n in "qkv"}


# ----------------------------------------------------------------------------- CPU suite


def cpu_suite(repeats: int, seed: int) -> list[Row]:
    """Each operation's default CPU backend vs its reference loop: time and peak memory."""
    f32 = torch.float32
    s = scan_inputs(1, 1536, 1024, 16, "cpu", f32, seed)
    gl = gla_inputs(1, 1024, 4, 64, 64, "cpu", f32, seed)
    rc = recurrence_inputs(1, 4096, 1536, "cpu", f32, seed)
    at = attention_inputs(1, 4, 2048, 64, "cpu", f32, seed)
    taps = list(range(63, 1024, 64))
    cases = {
        "selective_scan B1 D1536 L1024 N16": (lambda b: K.selective_scan(**s, backend=b), ("chunked", "ref")),
        "selective_scan + taps every 64": (
            lambda b: K.selective_scan(**s, tap_positions=taps if b != "none" else None, backend="chunked"),
            ("taps", "none")),
        "gated_linear_attention B1 T1024 H4 K=V=64": (
            lambda b: K.gated_linear_attention(**gl, backend=b), ("chunked", "ref")),
        "linear_recurrence B1 L4096 D1536": (
            lambda b: K.linear_recurrence(rc["a"], rc["b"], backend=b), ("loop", "ref")),
        "linear_recurrence log-space scan": (
            lambda b: K.linear_recurrence(rc["a"], rc["b"], backend=b), ("chunked", "ref")),
        "attention_stats B1 H4 L2048 d64": (lambda b: K.attention_stats(**at, backend=b), ("chunked", "ref")),
    }
    rows = []
    with torch.no_grad():
        for name, (run, (fast, base)) in cases.items():
            t = cpu_medians({fast: lambda: run(fast), base: lambda: run(base)}, repeats)
            rows.append({"case": name, "ours": fast, "baseline": base, "ours_ms": t[fast] * 1e3,
                         "baseline_ms": t[base] * 1e3, "ratio": t[fast] / t[base],
                         "ours_peak_MiB": peak_bytes(lambda: run(fast)) / 2**20,
                         "baseline_peak_MiB": peak_bytes(lambda: run(base)) / 2**20})
            print(_row_line(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- GPU suite


def roofline_seconds(s: dict, device: str) -> tuple[float, float]:
    """Lower bounds on a selective scan's time: bytes moved at the measured copy bandwidth, and
    exps (one per state element and step) at 16 per SM per clock."""
    B, D, L = s["u"].shape
    N = s["A"].shape[1]
    elt = s["u"].element_size()
    moved = (4 * B * D * L + 2 * B * N * L) * elt  # read u, delta, z, B, C; write y
    src = torch.empty(2**28, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = gpu_medians({"copy": lambda: dst.copy_(src)}, 1)["copy"]
    bandwidth = 2 * src.numel() / copy_s
    props = torch.cuda.get_device_properties(device)
    clock_hz = getattr(props, "clock_rate", 0) * 1e3 or 1.755e9  # kHz when torch reports it
    exps = B * D * L * N
    return moved / bandwidth, exps / (16 * props.multi_processor_count * clock_hz)


def scan_cases(s: dict, L: int, compile_baseline: bool = True) -> dict[str, dict[str, Callable[[], object]]]:
    """Selective scan: ours vs mamba-ssm (or our chunked scan, compiled unless told not to), and
    the taps' cost."""
    ours = lambda: K.selective_scan(**s, backend="triton")  # noqa: E731
    fn = optional("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    if fn is not None:
        base_name, base = "mamba-ssm selective_scan_fn", lambda: fn(**s)
    else:
        compiled = torch.compile(K.selective_scan_chunked) if compile_baseline else K.selective_scan_chunked
        base_name = "torch.compile(selective_scan_chunked)" if compile_baseline else "selective_scan_chunked"
        base = lambda: compiled(**s)  # noqa: E731
    taps = list(range(63, L, 64))
    return {"selective_scan": {"ours": ours, base_name: base},
            "selective_scan taps every 64": {
                "ours": lambda: K.selective_scan(**s, tap_positions=taps, backend="triton"), "no taps": ours}}


def linear_cases(gl: dict, rc: dict) -> dict[str, dict[str, Callable[[], object]]]:
    """GLA, simple GLA and the elementwise recurrence: ours vs flash-linear-attention."""
    H = gl["q"].shape[2]
    decay = torch.nn.functional.logsigmoid(torch.linspace(2, 6, H, device=gl["q"].device))
    q, k, v, g = gl["q"], gl["k"], gl["v"], gl["g"]
    cases = {"gla": {"ours": lambda: K.gated_linear_attention(q, k, v, g=g, backend="triton")},
             "simple_gla": {"ours": lambda: K.gated_linear_attention(q, k, v, decay=decay, backend="triton")},
             "linear_recurrence": {"ours": lambda: K.linear_recurrence(rc["a"], rc["b"],
                                                                       backend="triton")}}
    chunk_gla = optional("fla.ops.gla", "chunk_gla")
    chunk_simple_gla = optional("fla.ops.simple_gla", "chunk_simple_gla")
    chunk_hgrn = optional("fla.ops.hgrn", "chunk_hgrn")
    if chunk_gla is not None:
        cases["gla"]["fla chunk_gla"] = lambda: chunk_gla(q, k, v, g)
    if chunk_simple_gla is not None:
        per_token = decay.to(q.dtype).view(1, 1, H).expand(*q.shape[:3]).contiguous()
        cases["simple_gla"]["fla chunk_simple_gla"] = lambda: chunk_simple_gla(q, k, v, per_token)
    if chunk_hgrn is not None:
        cases["linear_recurrence"]["fla chunk_hgrn"] = lambda: chunk_hgrn(rc["b"], rc["log_a"])
    return cases


def attention_cases(at: dict) -> dict[str, dict[str, Callable[[], object]]]:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return {"attention_stats": {"ours": lambda: K.attention_stats(**at, backend="triton"),
                                "SDPA forward": lambda: sdpa(at["q"], at["k"], at["v"], is_causal=True)}}


def gpu_suite(device: str, smoke: bool, repeats: int, seed: int) -> list[Row]:
    """The GPU comparisons (``smoke``: tiny shapes on whatever device, timed with perf_counter)."""
    dt = torch.float32 if smoke else torch.bfloat16
    if smoke:
        shapes = dict(scan=(2, 8, 40, 4), gla=(1, 40, 2, 16, 16), rec=(2, 40, 24), att=(1, 2, 40, 16))
    else:
        shapes = dict(scan=(8, 1536, 4096, 16), gla=(4, 4096, 8, 128, 128), rec=(8, 4096, 2048),
                      att=(1, 8, 16384, 64))
    s = scan_inputs(*shapes["scan"], device, dt, seed)
    cases = scan_cases(s, shapes["scan"][2], compile_baseline=not smoke)
    cases.update(linear_cases(gla_inputs(*shapes["gla"], device, dt, seed),
                              recurrence_inputs(*shapes["rec"], device, dt, seed)))
    cases.update(attention_cases(attention_inputs(*shapes["att"], device, dt, seed)))
    timer = cpu_medians if smoke else gpu_medians
    rows = []
    with torch.no_grad():
        for name, fns in cases.items():
            t = timer(fns, repeats)
            for base in [n for n in fns if n != "ours"] or [None]:
                rows.append({"case": name, "ours": "triton", "baseline": base, "ours_ms": t["ours"] * 1e3,
                             "baseline_ms": None if base is None else t[base] * 1e3,
                             "ratio": None if base is None else t["ours"] / t[base]})
                print(_row_line(rows[-1]), flush=True)
    if not smoke:
        rows.append(_roofline_row(s, rows[0]["ours_ms"], device))
        rows.append(_long_attention_row(device, dt, seed, length=131072))
        print(_row_line(rows[-2]), _row_line(rows[-1]), sep="\n", flush=True)
    return rows


def _roofline_row(s: dict, ours_ms: float, device: str) -> Row:
    mem_s, exp_s = roofline_seconds(s, device)
    bound = max(mem_s, exp_s)
    return {"case": "selective_scan roofline", "ours": "triton", "baseline": "memory/exp bound",
            "ours_ms": ours_ms, "baseline_ms": bound * 1e3, "ratio": ours_ms / (bound * 1e3),
            "roofline_fraction": bound * 1e3 / ours_ms, "memory_bound_ms": mem_s * 1e3,
            "exp_bound_ms": exp_s * 1e3}


def _long_attention_row(device: str, dtype: torch.dtype, seed: int, length: int) -> Row:
    at = attention_inputs(1, 8, length, 64, device, dtype, seed)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    t = gpu_medians({"ours": lambda: K.attention_stats(**at, backend="triton")}, 1)["ours"]
    extra = torch.cuda.max_memory_allocated(device) - base
    return {"case": f"attention_stats L={length}", "ours": "triton", "baseline": None,
            "ours_ms": t * 1e3, "baseline_ms": None, "ratio": None, "peak_extra_MiB": extra / 2**20}


# ----------------------------------------------------------------------------- report


def _row_line(r: Row) -> str:
    line = f"{r['case']:<44} {r['ours']:>8} {r['ours_ms']:10.3f} ms"
    if r.get("baseline_ms") is not None:
        line += f"   {r['baseline']}: {r['baseline_ms']:.3f} ms   ratio {r['ratio']:.2f}"
    for key in ("ours_peak_MiB", "roofline_fraction", "peak_extra_MiB"):
        if key in r:
            line += f"   {key} {r[key]:.3g}"
    return line


def table(rows: list[Row]) -> str:
    lines = ["| case | ours | ours (ms) | baseline | baseline (ms) | ours / baseline |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = "-" if r.get("baseline_ms") is None else f"{r['baseline_ms']:.3f}"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['case']} | {r['ours']} | {r['ours_ms']:.3f} | {r['baseline'] or '-'} | {base} | {ratio} |")
    return "\n".join(lines)


def environment(device: str) -> str:
    import triton

    where = torch.cuda.get_device_name(device) if device == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    return f"{where}; torch {torch.__version__}, triton {triton.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes through the GPU suite's code")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write metrics.json here")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda requested but torch.cuda.is_available() is False")
    env = environment(a.device)
    print(env)
    if a.smoke:
        rows = gpu_suite(a.device, True, min(a.repeats, 2), a.seed)
    elif a.device == "cuda":
        rows = gpu_suite(a.device, False, a.repeats, a.seed)
    else:
        rows = cpu_suite(a.repeats, a.seed)
    print(table(rows))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
