"""Compile seqlens' Triton kernels for a CUDA GPU offline (no GPU needed), with the wheel's own
toolchain (``ptxas`` ships with Triton): a check that kernels developed in the CPU interpreter
(``TRITON_INTERPRET=1``) also lower to PTX and SASS.

:func:`compile_kernel` compiles one ``@triton.jit`` kernel for a given signature. :func:`main`
compiles every kernel of :mod:`~seqlens.models.kernels.linear_attention_triton` (chunked gated
linear attention) exactly as its launchers specialize them: the module's kernels are swapped for
recorders, the host code runs forward and backward on CPU tensors (the kernels are not run, so the
numbers are garbage; only the launches matter), and each distinct launch is compiled from the
signature, constexprs and divisibility attributes Triton's own argument binder derives from the
real arguments. Cases: GLA (per-key gates) and RetNet (per-head decay); with and without initial
state, taps and a gradient of the final state; fp32, fp16 and bf16 inputs; head dims 16, 64, 128
(and d_k ≠ d_v); sequence lengths giving one chunk, several, and lengths not divisible by 16.
Reported per kernel: shared memory (an H100 allows 227 KB per block), registers per thread and
the stack frame (where ptxas puts spills), read from the cubin.

    python -m seqlens.studies.compile_check [--arch 90] [--quick] [--detail]

The interpreter is decided when ``triton.jit`` runs, so ``TRITON_INTERPRET`` is removed from the
environment before the kernel module is imported (run this in a fresh process).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

MODULE = "seqlens.models.kernels.linear_attention_triton"
SMEM_LIMIT = 227 * 1024  #: shared memory per block on an H100 (sm_90)


@dataclass
class Compiled:
    """One kernel compiled for one specialization: ``error`` is None when it compiled."""

    name: str
    key: str
    error: str | None = None
    shared: int = 0
    regs: int = 0
    stack: int = 0
    ptx_bytes: int = 0
    cases: list[str] = field(default_factory=list)


def compile_kernel(kernel, signature: dict[str, str], constexprs: dict, num_warps: int = 4,
                   arch: int = 90, attrs: dict | None = None, num_stages: int = 3):
    """Compile a ``@triton.jit`` ``kernel`` for ``cuda:sm_<arch>`` and return Triton's compiled
    kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``). ``signature`` maps every
    parameter name to its type (``"*fp32"``, ``"i32"``, ``"fp32"``, ..., ``"constexpr"``),
    ``constexprs`` maps constexpr parameter names (or Triton's index paths) to their values (None
    for an absent pointer), ``attrs`` the index paths to Triton attributes (e.g. ``{(3,):
    [["tt.divisibility", 16]]}``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constants = {((kernel.arg_names.index(k),) if isinstance(k, str) else k): v
                 for k, v in constexprs.items()}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs or {})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(compiled) -> dict[str, int]:
    """``{"REG": registers per thread, "STACK": stack frame bytes (spills land here), ...}`` of a
    compiled kernel, read from its cubin by the wheel's ``cuobjdump``."""
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", out.split("Function", 1)[-1])}


def launch_spec(kernel, arch: int, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """``signature, constexprs, attrs, options`` of a launch ``kernel[grid](*args, **kwargs)``,
    derived by Triton's own argument binder (the specialization a GPU launch would compile)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, {"num_warps": opts.num_warps, "num_stages": opts.num_stages}


class _Recorder:
    """Stands in for a kernel: ``rec[grid](*args, **kwargs)`` records the launch instead."""

    def __init__(self, kernel, sink: Callable):
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink(self.kernel, args, kwargs)


def _import_compiled(name: str):
    """Import ``name`` with kernels for the compiler, not the interpreter."""
    os.environ.pop("TRITON_INTERPRET", None)
    if name in sys.modules:
        raise RuntimeError(f"{name} is already imported (maybe interpreted): run in a fresh process")
    return importlib.import_module(name)


def _gla_cases(quick: bool):
    """``(label, kwargs of run_case)`` for the GLA configurations."""
    dims = [(16, 16), (64, 64), (128, 128), (64, 128)]
    lengths = [200] if quick else [50, 200, 256]
    for (dk, dv), dtype, gated, init, taps, final, T in itertools.product(
            dims, ["float32", "float16", "bfloat16"], [True, False], [False, True],
            [None, "one", "several"], [True, False], lengths):
        label = (f"{'gla' if gated else 'retnet'} {dtype} dk={dk} dv={dv} T={T} "
                 f"h0={'y' if init else 'n'} taps={taps or 'none'} d_final={'y' if final else 'n'}")
        yield label, dict(dk=dk, dv=dv, dtype=dtype, gated=gated, init=init, taps=taps, final=final, T=T)


def _run_case(mod, dk: int, dv: int, dtype: str, gated: bool, init: bool, taps: str | None, final: bool,
              T: int):
    """Forward and backward through ``mod.gla_triton`` on CPU tensors (its kernels swapped for
    recorders), with the arguments ``gated_linear_attention(..., backend="triton")`` passes; the
    loss reads the output, the taps and (if ``final``) the final state."""
    import torch

    B, H = 2, 2
    dt = getattr(torch, dtype)
    q, k = (torch.randn(B, T, H, dk, dtype=dt, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, dv, dtype=dt, requires_grad=True)
    if gated:
        log_g = -torch.rand(B, T, H, dk, dtype=dt).requires_grad_()
    else:  # a per-head decay, expanded like gated_linear_attention(decay=...) does
        log_g = -torch.rand(H, dtype=dt).requires_grad_().view(1, 1, H, 1).expand(B, T, H, dk)
    h0 = torch.randn(B, H, dk, dv, requires_grad=True) if init else None
    positions = {None: None, "one": [T // 2], "several": [0, T // 2, T - 1]}[taps]
    res = mod.gla_triton(q, k, v, log_g, h0, None, positions)
    loss = res.o.float().sum() + (0 if res.taps is None else res.taps.sum())
    if final:
        loss = loss + res.final_state.sum()
    loss.backward()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90: H100)")
    ap.add_argument("--quick", action="store_true", help="one sequence length only")
    ap.add_argument("--detail", action="store_true", help="also one line per compiled variant")
    args = ap.parse_args(argv)

    from triton.runtime.jit import JITFunction

    mod = _import_compiled(MODULE)
    kernels = {n: k for n, k in vars(mod).items() if isinstance(k, JITFunction) and n.endswith("_kernel")}
    results: dict[str, Compiled] = {}
    label = ""

    def sink(kernel, a, kw):
        signature, constexprs, attrs, options = launch_spec(kernel, args.arch, a, kw)
        key = f"{kernel.__name__}|{sorted(signature.items())}|{sorted(constexprs.items())}|{sorted(attrs.items())}"
        if key not in results:
            rec = results[key] = Compiled(kernel.__name__, key)
            try:
                cc = compile_kernel(kernel, signature, constexprs, options["num_warps"], args.arch, attrs,
                                    options["num_stages"])
                rec.shared, rec.ptx_bytes = cc.metadata.shared, len(cc.asm["ptx"])
                usage = resource_usage(cc)
                rec.regs, rec.stack = usage.get("REG", 0), usage.get("STACK", 0)
                if rec.shared > SMEM_LIMIT:
                    rec.error = f"shared memory {rec.shared} B > {SMEM_LIMIT} B"
            except Exception as e:  # noqa: BLE001 - report every failure, then go on
                rec.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                print(f"FAILED {kernel.__name__} ({label}):\n{e}\n", file=sys.stderr)
        results[key].cases.append(label)

    for name, k in kernels.items():
        setattr(mod, name, _Recorder(k, sink))
    for label, case in _gla_cases(args.quick):
        _run_case(mod, **case)

    print(f"{'kernel':<22} {'variants':>8} {'ok':>4}  {'smem max (B)':>12}  {'regs max':>8}  "
          f"{'stack max (B)':>13}  {'ptx max (kB)':>12}  first failure")
    for name in kernels:
        recs = [r for r in results.values() if r.name == name]
        if not recs:
            print(f"{name:<22} never launched")
            continue
        bad = [r for r in recs if r.error]
        first = f"{bad[0].error} [{bad[0].cases[0]}]" if bad else ""
        print(f"{name:<22} {len(recs):>8} {len(recs) - len(bad):>4}  {max(r.shared for r in recs):>12}  "
              f"{max(r.regs for r in recs):>8}  {max(r.stack for r in recs):>13}  "
              f"{max(r.ptx_bytes for r in recs) / 1e3:>12.0f}  {first}")
    if args.detail:
        print(f"\n{'kernel':<22} {'status':<6} {'smem (B)':>8} {'regs':>5} {'stack':>5}  first of the cases")
        for r in sorted(results.values(), key=lambda r: (list(kernels).index(r.name), r.cases[0])):
            print(f"{r.name:<22} {'FAIL' if r.error else 'ok':<6} {r.shared:>8} {r.regs:>5} {r.stack:>5}  "
                  f"{r.cases[0]} (+{len(r.cases) - 1} more)")
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
