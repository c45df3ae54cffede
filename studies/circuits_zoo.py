"""Study: every head finder on the zoo, and the causal check of induction-attn2's induction heads.

Reproduces, on our own organisms, the two claims the circuit papers make about their heads: the
finders single them out (Olsson et al. 2022: induction heads by prefix matching; Wu et al. 2024:
retrieval heads by copy hits; Gould et al. 2023: successor heads) and ablating the heads a finder
picks removes the behaviour far more than ablating as many random heads (the causal check).

    python -m seqlens.studies.circuits_zoo [--models induction-attn2 mqar-mamba ...]
        [--finders induction previous_token ...] [--top 3] [--n-random 20] [--out DIR]

Prints each model's best head per finder and the causal check. With ``--out`` it writes
``metrics.json`` (every score matrix and the check) and ``report.html`` (every figure).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import seqlens
from seqlens.circuits import FINDERS, causal_check, induction_scores

DEFAULT_MODELS = ["induction-attn2", "successor-transformer", "mqar-transformer", "mqar-mamba", "mqar-gla",
                  "mqar-mingru", "mqar-lstm"]
QUICK = {"retrieval": {"lengths": [32], "depths": [0.5], "n_trials": 2, "progress": False}}


def run_finders(name: str, finders: list[str]) -> tuple[dict, list]:
    """``({finder: {"top": ..., "scores": ..., "seconds": ...}}, figures)`` for zoo model ``name``."""
    model, out, figures = seqlens.load(name), {}, []
    for family in finders:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = FINDERS[family](model, **QUICK.get(family, {}))
        out[family] = {"top": [[list(h), s] for h, s in res.top(3)], "scores": res.scores.tolist(),
                       "seconds": round(time.perf_counter() - t0, 2), "warnings": [str(w.message) for w in caught]}
        figures.append(res.figure(title=f"{name}: {res.name}"))
    return out, figures


def induction_check(top: int, n_random: int, seed: int) -> tuple[dict, object]:
    """The causal check of induction-attn2's ``top`` best induction heads (default data)."""
    model = seqlens.load("induction-attn2")
    heads = [h for h, _ in induction_scores(model).top(top)]
    res = causal_check(model, heads, n_random=n_random, seed=seed, progress=False)
    rand = res.random_fraction_removed()
    metrics = {"heads": [list(h) for h in heads], "metric": res.metric, "baseline": res.baseline,
               "ablated": res.ablated, "fraction_removed": res.fraction_removed(),
               "random_fraction_removed_mean": sum(rand) / len(rand), "n_random": n_random, "seed": seed}
    return metrics, res.figure()


def write_report(path: Path, figures: list) -> None:
    """One HTML page with every figure (plotly.js inlined once, so the file works offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    path.write_text("<html><head><meta charset='utf-8'><title>seqlens: circuits on the zoo</title></head><body>"
                    + "\n".join(parts) + "</body></html>")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqlens.studies.circuits_zoo", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--finders", nargs="+", default=list(FINDERS), choices=list(FINDERS))
    p.add_argument("--top", type=int, default=3, help="induction heads ablated in the causal check")
    p.add_argument("--n-random", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    metrics, figures = {"finders": {}}, []
    for name in a.models:
        metrics["finders"][name], figs = run_finders(name, a.finders)
        figures += figs
        best = ", ".join(f"{f} L{v['top'][0][0][0]}H{v['top'][0][0][1]} {v['top'][0][1]:.3f}"
                         for f, v in metrics["finders"][name].items())
        print(f"{name}: {best}")
    metrics["causal_check"], fig = induction_check(a.top, a.n_random, a.seed)
    figures.append(fig)
    c = metrics["causal_check"]
    print(f"induction-attn2 causal check: ablating {c['heads']} removes {c['fraction_removed']:.2f} of "
          f"{c['metric']} (baseline {c['baseline']:.3f}); {a.n_random} random head sets remove "
          f"{c['random_fraction_removed_mean']:.2f} on average")
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(a.out / "report.html", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
