"""Benchmark: SAE training and harvesting throughput, each beside a minimal baseline in one run.

* training (tokens/s = samples per second): ``train_sae`` for TopK and standard SAEs on the same
  activations, side by side with a minimal PyTorch loop of the same model (encoder, activation,
  decoder, MSE (+ L1), Adam; none of the trainer's bookkeeping: AuxK, dead-latent counts,
  decoder projection, logging);
* harvesting (tokens/s): ``harvest`` of one hook against ``run_with_cache`` (every hook cached)
  and ``run_with_cache(names_filter=hook)`` on the same tokens.

    seqlens bench sae [--device cpu|cuda] [--model NAME] [--d-sae 2048] [--k 32] [--steps 50]
                      [--batch-size 1024] [--repeats 3] [--smoke] [--out DIR]

Timings are medians of ``--repeats`` alternating runs after a warm-up.

Prints a table and writes ``metrics.json`` to ``--out`` (default ``runs/bench_sae``).
``--smoke`` runs tiny shapes: a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import seqlens
from seqlens.probes import sae as S


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def medians(fns: dict, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function after a warm-up; the runs alternate so that load
    drift on a shared machine hits every function alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def reference_loop(X: torch.Tensor, sae_type: str, d_sae: int, k: int, steps: int, batch_size: int, lr: float,
                   device: str) -> None:
    """The minimal PyTorch SAE loop the trainer is compared with."""
    gen = torch.Generator().manual_seed(0)
    d = X.shape[1]
    W_dec = torch.nn.Parameter((torch.randn(d_sae, d, generator=gen) / d ** 0.5).to(device))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    for step in range(steps):
        x = X[torch.randint(0, X.shape[0], (batch_size,), generator=gen)].to(device)
        z = (x - b_dec) @ W_enc + b_enc
        if sae_type == "topk":
            v, i = z.topk(k, dim=-1)
            f = torch.zeros_like(z).scatter(-1, i, v.relu())
        else:
            f = z.relu()
        loss = (f @ W_dec + b_dec - x).pow(2).sum(-1).mean()
        if sae_type == "standard":
            loss = loss + 1e-3 * f.sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def bench_training(X: torch.Tensor, args) -> list[dict]:
    rows = []
    for sae_type in ("topk", "standard"):
        kw = dict(architecture=sae_type, d_sae=args.d_sae, steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                  progress=False, device=args.device)
        if sae_type == "topk":
            kw["k"] = args.k
        t = medians({"ours": lambda: S.train_sae(X, **kw),
                     "ref": lambda: reference_loop(X, sae_type, args.d_sae, args.k, args.steps, args.batch_size, 1e-3,
                                                   args.device)}, args.device, args.repeats)
        n = args.steps * args.batch_size
        rows.append({"bench": f"train {sae_type}", "seqlens_tok_s": n / t["ours"], "baseline": "minimal PyTorch loop",
                     "baseline_tok_s": n / t["ref"], "ratio": t["ref"] / t["ours"]})
    return rows


@torch.no_grad()
def bench_harvest(model, tokens: torch.Tensor, hook: str, device: str, repeats: int) -> list[dict]:
    n = tokens.numel()
    t = medians({"ours": lambda: S.harvest(model, hook, tokens, batch_size=tokens.shape[0], progress=False),
                 "run_with_cache (all hooks)": lambda: model.run_with_cache(tokens),
                 "run_with_cache(names_filter=hook)": lambda: model.run_with_cache(tokens, names_filter=hook)},
                device, repeats)
    return [{"bench": f"harvest {hook}", "seqlens_tok_s": n / t["ours"], "baseline": name,
             "baseline_tok_s": n / t[name], "ratio": t[name] / t["ours"]} for name in list(t)[1:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seqlens bench sae", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="zoo name or directory (default: a random 2-layer Mamba, d_model 256)")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--seqs", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default="runs/bench_sae")
    args = p.parse_args(argv)
    if args.smoke:
        args.d_sae, args.k, args.steps, args.batch_size, args.seqs, args.seq_len, args.repeats = 64, 4, 3, 32, 2, 32, 1
    torch.manual_seed(0)
    if args.model:
        model = seqlens.load(args.model)
    else:
        d = 32 if args.smoke else 256
        model = seqlens.build(seqlens.ModelConfig(arch="mamba", d_model=d, n_layers=2, vocab_size=256), seed=0)
    model = model.to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.vocab_size, (args.seqs, args.seq_len), generator=gen)
    rows = bench_harvest(model, tokens.to(args.device), args.hook, args.device, args.repeats)
    X = S.harvest(model, args.hook, tokens, progress=False).to_tensor()
    rows += bench_training(X, args)
    print(f"{'bench':<40} {'seqlens tok/s':>14} {'baseline tok/s':>15} {'baseline/seqlens time':>22}  baseline")
    for r in rows:
        print(f"{r['bench']:<40} {r['seqlens_tok_s']:>14,.0f} {r['baseline_tok_s']:>15,.0f} "
              f"{r['ratio']:>22.2f}  {r['baseline']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "torch": torch.__version__, "platform": platform.platform(),
            "args": vars(args), "smoke": args.smoke}
    (out / "metrics.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
