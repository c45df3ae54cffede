"""Study: the sparsity / reconstruction frontier of every SAE architecture on an attention and a
recurrent model.

For each organism (default the text Transformer and the text Mamba, hook
``blocks.1.hook_resid_post``), activations are harvested from windows of the stdlib corpus'
training split; every architecture (standard, topk, batchtopk, jumprelu, matching_pursuit) is
trained at several sparsity settings (k for TopK / BatchTopK / MP, the L1 coefficient for the
standard SAE, the initial threshold for JumpReLU) with the same seed, width and budget; each SAE is
evaluated on held-out windows of the validation split: L0, FVU and CE loss recovered
(``sae.evaluate`` with the model; docs/methods.md §8). The frontier of an architecture is its
Pareto-optimal points (no other point of it has both lower L0 and lower FVU).

    python -m seqlens.studies.sae_frontier [--models text-transformer text-mamba] [--hook HOOK]
        [--archs topk ...] [--settings 4] [--d-sae 512] [--steps 200] [--train-seqs 200] [--eval-seqs 32] [--seq-len 128]
        [--seed 0] [--device cpu|cuda]
        [--out DIR] [--smoke]

Prints one line per SAE and a table. With ``--out`` it writes ``metrics.json`` (every point and
each architecture's frontier) and ``report.html`` (L0 vs FVU and L0 vs CE recovered per organism).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import seqlens
from seqlens.probes import sae

DEFAULT_MODELS = ["text-transformer", "text-mamba"]
SMOKE_MODELS = ["text-mamba"]
HOOK = "blocks.1.hook_resid_post"
# architecture -> (the knob that sets its sparsity, its values: sparsest first)
SWEEPS: dict[str, tuple[str, list[float]]] = {
    "topk": ("k", [4, 8, 16, 32]),
    "batchtopk": ("k", [4, 8, 16, 32]),
    "matching_pursuit": ("k", [4, 8, 16, 32]),
    "standard": ("l1_coefficient", [20.0, 5.0, 2.0, 0.5]),
    # JumpReLU's threshold moves by at most ~lr per Adam step, so in a run of a few hundred steps
    # its sparsity is set by where the threshold starts, not by the L0 coefficient (which left L0
    # unchanged from 1 to 0.03 in a first run): the knob is the initial threshold
    "jumprelu": ("jumprelu_init_threshold", [1.0, 0.3, 0.1, 0.01]),
}
SMOKE_SWEEPS = {arch: (knob, values[1:3]) for arch, (knob, values) in SWEEPS.items()}
QUESTION = ("At equal L0, which SAE architecture reconstructs the hook best (FVU) and keeps the most of "
            "the model's loss (CE recovered), on an attention model and on a recurrent one?")


def windows(split: str, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` byte tokens at random starts of ``split`` (seeded)."""
    from seqlens.corpus import StdlibCorpus

    text = StdlibCorpus().tokens(split)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(text) - seq_len, (n,), generator=g)
    return torch.stack([text[s:s + seq_len] for s in starts.tolist()]).long()


def train_point(store, arch: str, knob: str, value: float, a: argparse.Namespace) -> sae.SAE:
    """One SAE of ``arch`` with its sparsity knob at ``value`` (everything else shared)."""
    options: dict[str, Any] = {knob: int(value)} if knob == "k" else {"k": None, knob: float(value)}
    return sae.train_sae(store, architecture=arch, d_sae=a.d_sae, steps=a.steps, batch_size=a.batch_size,
                         seed=a.seed, device=a.device, progress=False, log_every=max(1, a.steps // 10), **options)


def point_metrics(m: sae.SAEMetrics) -> dict[str, float | None]:
    return {n: (None if getattr(m, n) is None else float(getattr(m, n))) for n in m.NAMES}


def frontier(points: list[dict]) -> list[int]:
    """Indices of the Pareto-optimal points (lower L0 and lower FVU are better), by L0."""
    keep = [i for i, p in enumerate(points)
            if not any(q["l0"] <= p["l0"] and q["fvu"] <= p["fvu"] and (q["l0"], q["fvu"]) != (p["l0"], p["fvu"])
                       for q in points)]
    return sorted(keep, key=lambda i: points[i]["l0"])


def run_model(name: str, a: argparse.Namespace) -> dict:
    """Every architecture's points on organism ``name``: ``{arch, hook, points: {sae arch: [...]}}``."""
    model = seqlens.load(name).eval().to(a.device)  # the SAEs train on the same device
    train = windows("train", a.train_seqs, a.seq_len, a.seed)
    held_out = windows("val", a.eval_seqs, a.seq_len, a.seed + 1)  # another seed than training
    store = sae.harvest(model, a.hook, train, progress=False)
    out: dict[str, Any] = {"arch": model.cfg.arch, "hook": a.hook, "train_rows": len(store), "points": {}}
    for sae_arch, (knob, values) in a.sweeps.items():
        points = []
        for value in values:
            t0 = time.perf_counter()
            s = train_point(store, sae_arch, knob, value, a)
            with torch.no_grad():
                m = sae.evaluate(s, held_out, model=model, hook=a.hook)
            p = {"knob": knob, "value": value, **point_metrics(m), "seconds": round(time.perf_counter() - t0, 2)}
            points.append(p)
            print(f"{name} {sae_arch} {knob}={value:g}: L0 {p['l0']:.2f} FVU {p['fvu']:.4f} "
                  f"CE recovered {p['ce_recovered']:.4f}", flush=True)
        out["points"][sae_arch] = points
        out.setdefault("frontier", {})[sae_arch] = frontier(points)
    return out


def figure(name: str, result: dict):
    """L0 vs FVU (left) and L0 vs CE recovered (right), one line per SAE architecture."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("L0 vs FVU (lower is better)", "L0 vs CE loss recovered"))
    for i, (sae_arch, points) in enumerate(result["points"].items()):
        pts = sorted(points, key=lambda p: p["l0"])
        colour = dict(color=f"hsl({72 * i}, 70%, 45%)")
        for col, metric in ((1, "fvu"), (2, "ce_recovered")):
            fig.add_trace(go.Scatter(x=[p["l0"] for p in pts], y=[p[metric] for p in pts], mode="lines+markers",
                                     name=sae_arch, legendgroup=sae_arch, showlegend=col == 1, line=colour,
                                     text=[f"{p['knob']}={p['value']:g}" for p in pts]), row=1, col=col)
    fig.update_xaxes(title_text="L0 (held out)", type="log")
    fig.update_layout(title=f"{name} ({result['arch']}), {result['hook']}: SAE frontier")
    return fig


def table(results: dict) -> str:
    """One row per (organism, SAE architecture, knob value)."""
    rows = [f"{'model':<18} {'sae':<17} {'knob':<30} {'L0':>8} {'FVU':>8} {'CE rec':>8}  frontier"]
    for name, r in results.items():
        for sae_arch, points in r["points"].items():
            for i, p in enumerate(points):
                ce = "-" if p["ce_recovered"] is None else f"{p['ce_recovered']:.4f}"
                rows.append(f"{name:<18} {sae_arch:<17} {p['knob'] + '=' + format(p['value'], 'g'):<30} "
                            f"{p['l0']:>8.2f} {p['fvu']:>8.4f} {ce:>8}  {'*' if i in r['frontier'][sae_arch] else ''}")
    return "\n".join(rows)


def write_report(path: Path, figures: list, text: str) -> None:
    """One HTML page: the question, the table and every figure (plotly.js inlined once, offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    path.write_text("<html><head><meta charset='utf-8'><title>seqlens: SAE frontier</title></head><body>"
                    f"<h1>SAE frontier</h1><p>{QUESTION}</p><pre>{text}</pre>" + "\n".join(parts) + "</body></html>")


def spread(knob: str, values: list[float], n: int | None) -> tuple[str, list[float]]:
    """``n`` of ``values`` evenly spread from the first to the last (all of them for None)."""
    if n is None or n >= len(values):
        return knob, values
    if n < 1:
        raise ValueError(f"settings: expected a positive integer, got {n}")
    picks = sorted({round(i * (len(values) - 1) / max(n - 1, 1)) for i in range(n)})
    return knob, [values[i] for i in picks]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m seqlens.studies.sae_frontier", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--archs", nargs="+", default=None, choices=list(SWEEPS), help="SAE architectures (default all)")
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-seqs", type=int, default=200, help="training windows (x seq-len activation rows)")
    p.add_argument("--eval-seqs", type=int, default=32, help="held-out validation windows")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--settings", type=int, default=None,
                   help="sparsity settings per architecture, spread over its grid (default all four)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="text-mamba, two settings per architecture, tiny budget")
    a = p.parse_args(argv)
    if a.smoke:
        a.d_sae, a.steps, a.batch_size, a.train_seqs, a.eval_seqs, a.seq_len = 32, 10, 32, 4, 2, 32
    a.models = a.models or (SMOKE_MODELS if a.smoke else DEFAULT_MODELS)
    sweeps = SMOKE_SWEEPS if a.smoke else SWEEPS
    a.sweeps = {arch: spread(*sweeps[arch], a.settings) for arch in (a.archs or sweeps)}
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.manual_seed(a.seed)
    results = {name: run_model(name, a) for name in a.models}
    text = table(results)
    print(text)
    finite = all(math.isfinite(p["fvu"]) and math.isfinite(p["l0"])
                 for r in results.values() for pts in r["points"].values() for p in pts)
    metrics = {"question": QUESTION,
               "measured": "held-out L0, FVU = ΣVar(x−x̂)/ΣVar(x), CE loss recovered (zero-ablation baseline)",
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "models": results, "all_finite": finite}
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(a.out / "report.html", [figure(n, r) for n, r in results.items()], text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
