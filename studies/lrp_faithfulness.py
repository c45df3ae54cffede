"""Study: token-flipping faithfulness of every attribution method on one zoo organism per architecture.

Reproduces the claim of the MambaLRP paper (Jafari et al. 2024, Table 2) and the AttnLRP paper
(Achtibat et al. 2024): the architecture's LRP rule set ranks input tokens more faithfully than
gradient × input and than a random ranking, measured by token flipping (ΔA^F = AUC_LeRF − AUC_MoRF,
larger is more faithful; docs/methods.md §6). Text organisms are explained on held-out windows of the
stdlib corpus (validation split) at their last position; task organisms (MQAR, passkey) on their own
evaluation batch at the last position their loss scores (the answer).

    python -m seqlens.studies.lrp_faithfulness [--models text-mamba ...] [--windows 8] [--seq-len 128]
        [--steps 10] [--seed 0] [--out DIR] [--smoke]

Prints ΔA^F per model and method. With ``--out`` it writes ``metrics.json`` (ΔA^F, the claim and
whether it reproduced on each model) and ``report.html`` (the MoRF / LeRF curves).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import seqlens
from seqlens.circuits.lrp import token_flipping
from seqlens.circuits.lrp.rules import auto_method

DEFAULT_MODELS = ["text-transformer", "text-mamba", "text-lstm", "text-mingru", "mqar-gla", "passkey-mamba-n16"]
SMOKE_MODELS = ["text-mamba", "passkey-mamba-n16"]
METHODS = ["auto", "gxi", "ig", "smoothgrad", "rollout", "random"]
CLAIM = ("LRP ΔA^F > G×I ΔA^F and > random (MambaLRP paper, Jafari et al. 2024, Table 2, on Mamba; "
         "AttnLRP paper, Achtibat et al. 2024, on Transformers)")


def model_data(model, windows: int, seq_len: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``(tokens [B, L], positions)``: held-out stdlib windows explained at the last position for
    text organisms; the organism's own evaluation batch at its last scored position otherwise."""
    from seqlens.corpus import StdlibCorpus
    from seqlens.tasks import get_batch

    if model.recipe is None or model.recipe.data == "corpus:stdlib":
        L = min(seq_len, model.cfg.n_ctx)
        gen = torch.Generator().manual_seed(seed)
        pool = StdlibCorpus().eval_windows(L, split="val", max_windows=max(64, windows))
        pick = torch.randperm(len(pool), generator=gen)[:windows]
        return pool[pick, :L], [L - 1] * windows
    batch = get_batch(model.recipe, seed, split="eval")
    tokens, mask = batch.tokens[:windows], batch.loss_mask[:windows]
    positions = [int(row.nonzero().max()) if row.any() else tokens.shape[1] - 1 for row in mask]
    return tokens, positions


def run_model(name: str, a: argparse.Namespace) -> tuple[dict, object]:
    """``(metrics, figure)`` of token flipping on zoo organism ``name``."""
    model = seqlens.load(name)
    tokens, positions = model_data(model, a.windows, a.seq_len, a.seed)
    t0 = time.perf_counter()
    curves = token_flipping(model, tokens, methods=METHODS, steps=a.steps, position=positions, seed=a.seed,
                            ig_steps=a.ig_steps, samples=a.samples, progress=False)
    lrp = auto_method(model)
    d = curves.delta_af
    reproduced = d[lrp] > d["gxi"] and d[lrp] > d["random"]
    metrics = {"arch": model.cfg.arch, "lrp_method": lrp, "delta_af": d, "n_sequences": curves.n_sequences,
               "seq_len": int(tokens.shape[1]), "positions": positions,
               "auc": {m: {o: curves.auc(m, o) for o in c} for m, c in curves.curves.items()},
               "lrp_beats_gxi": d[lrp] > d["gxi"], "lrp_beats_random": d[lrp] > d["random"],
               "reproduced": reproduced, "seconds": round(time.perf_counter() - t0, 2)}
    fig = curves.figure()
    fig.update_layout(title=f"{name} ({model.cfg.arch}): token flipping")
    return metrics, fig


def write_report(path: Path, figures: list, table: str) -> None:
    """One HTML page: the ΔA^F table and every curve (plotly.js inlined once, so it works offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    path.write_text("<html><head><meta charset='utf-8'><title>seqlens: LRP faithfulness</title></head><body>"
                    f"<h1>Token flipping on the zoo</h1><p>Claim: {CLAIM}</p><pre>{table}</pre>"
                    + "\n".join(parts) + "</body></html>")


def table(results: dict) -> str:
    """ΔA^F per model (rows) and method (columns); the LRP column is the model's own rule set."""
    head = f"{'model':<20} {'lrp rule set':<10} " + " ".join(f"{m:>10}" for m in ["lrp"] + METHODS[1:]) + "  reproduced"
    rows = [head]
    for name, r in results.items():
        vals = [r["delta_af"][r["lrp_method"]]] + [r["delta_af"][m] for m in METHODS[1:]]
        rows.append(f"{name:<20} {r['lrp_method']:<10} " + " ".join(f"{v:>10.3f}" for v in vals)
                    + f"  {'yes' if r['reproduced'] else 'no'}")
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m seqlens.studies.lrp_faithfulness", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--windows", type=int, default=8, help="sequences per organism")
    p.add_argument("--seq-len", type=int, default=128, help="window length of the text organisms")
    p.add_argument("--steps", type=int, default=10, help="flipping grid (fractions 0, 1/steps, ..., 1)")
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="2 organisms, 2 windows of 32, 3 steps (seconds)")
    a = p.parse_args(argv)
    if a.smoke:
        a.windows, a.seq_len, a.steps, a.ig_steps, a.samples = 2, 32, 3, 4, 2
    a.models = a.models or (SMOKE_MODELS if a.smoke else DEFAULT_MODELS)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    results, figures = {}, []
    for name in a.models:
        results[name], fig = run_model(name, a)
        figures.append(fig)
        print(f"{name}: " + ", ".join(f"{m} {v:.3f}" for m, v in results[name]["delta_af"].items()), flush=True)
    text = table(results)
    print(text)
    finite = all(math.isfinite(v) for r in results.values() for v in r["delta_af"].values())
    metrics = {"claim": CLAIM, "measured": "ΔA^F = AUC_LeRF − AUC_MoRF of the mean target logit per method",
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "methods": METHODS, "models": results, "all_finite": finite,
               "reproduced": {n: r["reproduced"] for n, r in results.items()},
               "reproduced_all": all(r["reproduced"] for r in results.values())}
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(a.out / "report.html", figures, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
