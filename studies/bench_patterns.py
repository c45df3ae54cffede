"""Benchmark: implicit attention (``mixer_pattern``) by the SSD chunk split vs the direct formula.

Same process, same inputs: Mamba-1's ``pattern`` on one layer of ``--model``
(default the zoo's ``text-mamba``; tokens ``[--batch, --length]``) as the model computes it (each
channel group's sum by the chunk split of models/kernels/decay_attention.py, the scan inputs
included) and with ``_alpha_reference(exact=False)`` (exp of the
``[B, d, N, L, L]`` float32 segment sums: the code before the split, under its budget of 2^25 / N
elements a channel block, grouped by today's ``grouped_pattern``); and GLA's
``gla_attention_matrix`` with ``chunk`` vs ``chunk=None`` on random ``[B, L, H, d_k]`` inputs.
Prints median seconds, their ratio and the largest |difference| of the two results.

    python -m seqlens.studies.bench_patterns [--model text-mamba] [--batch 10] [--length 128]
        [--layer 0] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from seqlens.models.base import grouped_pattern


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out, times = fn(), []  # the first call warms up
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def mamba_pair(model, tokens: torch.Tensor, layer: int):
    """(chunked pattern, direct pattern) closures on one layer's mixer input."""
    mixer = model.blocks[layer].mixer
    x = model.mixer_input(tokens, layer)
    p = mixer.ssm_inputs(x, None)
    shape = tuple(x.shape[:2])
    direct = lambda: grouped_pattern(lambda sl: mixer._alpha_reference(p, sl, exact=False), mixer.d_inner,  # noqa: E731
                                     mixer.cfg.n_groups, shape, 2**25 // mixer.d_state, x.device)
    chunked = lambda: mixer.pattern(x)  # noqa: E731  (group sums by the chunk split, models/mamba.py)
    return chunked, direct


def gla_pair(B: int, L: int, H: int, dk: int):
    from seqlens.models.gla import gla_attention_matrix
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, L, H, dk, generator=g) for _ in range(2))
    log_g = torch.nn.functional.logsigmoid(torch.randn(B, L, H, dk, generator=g) + 3)
    return (lambda: gla_attention_matrix(q, k, log_g), lambda: gla_attention_matrix(q, k, log_g, chunk=None))


def row(name: str, pair, repeats: int) -> str:
    chunked, direct = pair
    t_direct, ref = timed(direct, repeats)
    t_chunked, got = timed(chunked, repeats)
    diff = (got - ref).abs().max().item()
    return f"| {name} | {t_direct:.3f} | {t_chunked:.3f} | {t_direct / t_chunked:.1f} | {diff:.1e} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="seqlens bench patterns", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="text-mamba")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a tiny random Mamba, 1 repeat (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        from seqlens.testing.tiny import make
        model, args.batch, args.length, args.repeats = make("mamba"), 2, 20, 1
    else:
        import seqlens
        model = seqlens.load(args.model)
    tokens = torch.randint(0, model.cfg.vocab_size, (args.batch, args.length),
                           generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| pattern | direct (s) | chunked (s) | direct / chunked | max abs diff |\n|---|---|---|---|---|")
    with torch.no_grad():
        name = "text-mamba" if not args.smoke else "tiny mamba"
        print(row(f"{name} layer {args.layer}, B {args.batch}, L {args.length}",
                  mamba_pair(model, tokens, args.layer), args.repeats))
        B, L = (args.batch, args.length)
        print(row(f"GLA matrix B {B}, L {L}, H 4, d_k 32", gla_pair(B, L, 4, 32), args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
