"""Study: every head finder on the zoo, and the causal check of induction-attn2's induction heads.

Reproduces, on our own organisms, the two claims the circuit papers make about their heads: the
finders single them out (Olsson et al. 2022: induction heads by prefix matching; Wu et al. 2024:
retrieval heads by copy hits; Gould et al. 2023: successor heads) and ablating the heads a finder
picks removes the behaviour far more than ablating as many random heads (the causal check).

    python -m seqlens.studies.zoo_circuits [--models induction-attn2 mqar-mamba ...]
        [--finders induction previous_token ...] [--top 3] [--n-random 20] [--smoke] [--out DIR]

(``seqlens.studies.circuits_zoo`` is the old name of this module.) Prints each model's best head per
finder and the causal check. With ``--out`` it writes ``metrics.json`` (every score matrix and the
check, under ``finders`` / ``causal_check`` and in ``measured``) and ``report.html`` (every figure).
Reproduced when the top heads remove at least half of the in-context loss drop and the random
sets remove less than half of what the top heads remove.
"""

from __future__ import annotations

import time
import warnings

import seqlens
from seqlens.circuits import FINDERS, causal_check, induction_scores
from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["zoo_circuits"]

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
               "random_fraction_removed_mean": sum(rand) / len(rand), "n_random": n_random,
               "n_sets": len(rand), "seed": seed}  # n_sets < n_random when fewer distinct sets exist
    return metrics, res.figure()


def main(argv: list[str] | None = None) -> int:
    p = parser("zoo_circuits", __doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--finders", nargs="+", default=list(FINDERS), choices=list(FINDERS))
    p.add_argument("--top", type=int, default=3, help="induction heads ablated in the causal check")
    p.add_argument("--n-random", type=int, default=20)
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.finders, a.n_random = ["induction-attn2"], ["induction", "previous_token"], 3
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    finders = {}
    for name in a.models:
        if study.organism(name) is None:
            continue
        finders[name], figs = run_finders(name, a.finders)
        for f in figs:
            study.figure(f)
        best = ", ".join(f"{f} L{v['top'][0][0][0]}H{v['top'][0][0][1]} {v['top'][0][1]:.3f}"
                         for f, v in finders[name].items())
        study.log(f"{name}: {best}")
    c, fig = induction_check(a.top, a.n_random, a.seed)
    study.figure(fig)
    sets = c["n_sets"] if c["n_sets"] == a.n_random else f"{c['n_sets']} (all distinct; {a.n_random} requested)"
    study.log(f"induction-attn2 causal check: ablating {c['heads']} removes {c['fraction_removed']:.2f} of "
              f"{c['metric']} (baseline {c['baseline']:.3f}); {sets} random head sets remove "
              f"{c['random_fraction_removed_mean']:.2f} on average")
    reproduced = c["fraction_removed"] >= 0.5 and c["random_fraction_removed_mean"] < 0.5 * c["fraction_removed"]
    verdict = (f"ablating induction-attn2's top {a.top} induction heads removes {c['fraction_removed']:.2f} of the "
               f"in-context loss drop, {sets} random sets of {a.top} remove {c['random_fraction_removed_mean']:.2f} "
               "on average")
    study.finish({"finders": finders, "causal_check": c}, reproduced, verdict, finders=finders, causal_check=c)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
