"""Study: n-gram heads and in-context language learning (Akyürek et al. 2024).

On every ICLL organism (random-DFA languages learned in context; ``icll-<arch>``):
``circuits.ngram_scores`` for n = 1, 2, 3 (attention mass on the keys that follow earlier copies of
the current n-gram, on the organism's own DFA strings; recurrent models through their implicit
attention), and on each organism the causal check of its top ``--top`` 2- and 3-gram heads
against ``--n-random`` draws of as many random heads, scored by the recipe's legal-next-token
accuracy. Reproduced when the Transformer's best 2/3-gram score exceeds every recurrent
organism's and ablating its top heads removes at least twice what random heads remove. Without a
recurrent ICLL organism the comparison is not testable (reported, not assumed).

    python -m seqlens.studies.icll_ngram_heads [--models icll-transformer icll-mamba ...] [--top 2]
        [--n-random 10] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["icll_ngram_heads"]
DEFAULT_MODELS = [f"icll-{a}" for a in ("transformer", "mamba", "gla", "lstm", "mingru", "fox", "retnet", "minlstm")]


def measure(model, a) -> tuple[dict, list]:
    from seqlens.circuits import causal_check, ngram_scores

    scores = {n: ngram_scores(model, n, batch=a.batch, seed=a.seed) for n in (1, 2, 3)}
    best = {n: s.top(1)[0] for n, s in scores.items()}
    ranked = sorted({h: max(float(scores[2].scores[h]), float(scores[3].scores[h]))
                     for h in [(l, k) for l in range(scores[2].n_layers) for k in range(scores[2].n_heads)]}.items(),
                    key=lambda kv: -kv[1])
    heads = [h for h, _ in ranked[:a.top]]
    check = causal_check(model, heads, n_random=a.n_random, seed=a.seed, progress=False)
    rand = check.random_drop_mean
    out = {"best": {f"ngram{n}": {"head": list(h), "score": v} for n, (h, v) in best.items()},
           "best_23": ranked[0][1], "ablated_heads": [list(h) for h in heads], "metric": check.metric,
           "baseline": check.baseline, "ablated": check.ablated, "drop": check.drop,
           "random_drop_mean": rand, "random": check.random,
           "scores": {f"ngram{n}": s.scores for n, s in scores.items()}}
    return out, [scores[2].figure(title="2-gram head scores"), check.figure()]


def main(argv: list[str] | None = None) -> int:
    p = parser("icll_ngram_heads", __doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--top", type=int, default=2, help="n-gram heads ablated")
    p.add_argument("--n-random", type=int, default=10)
    p.add_argument("--batch", type=int, default=10, help="DFA strings for the n-gram scores")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.n_random, a.batch = ["icll-transformer"], 2, 2
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = study.measure_each(a.models, lambda model: measure(model, a), lambda name, r: (
        f"{name}: best 2/3-gram score {r['best_23']:.2f}; ablating {r['ablated_heads']}: {r['metric']} "
        f"{r['baseline']:.3f} → {r['ablated']:.3f} (drop {r['drop']:.3f}; random {r['random_drop_mean']:.3f})"))
    t = results.get("icll-transformer")
    if t is None:
        study.finish({"models": results}, None, "organism missing: icll-transformer")
        return 0
    recurrent = {n: r["best_23"] for n, r in results.items() if n != "icll-transformer"}
    causal = t["drop"] > 0 and t["drop"] >= 2 * max(t["random_drop_mean"], 0.0)
    if not recurrent:
        study.note("no recurrent ICLL organism in the zoo: the Transformer-vs-recurrent comparison is not testable")
    above = all(t["best_23"] > v for v in recurrent.values())
    verdict = (f"icll-transformer: best 2/3-gram head score {t['best_23']:.2f}; ablating its top {len(t['ablated_heads'])} "
               f"lowers {t['metric']} by {t['drop']:.3f} vs {t['random_drop_mean']:.3f} for random heads"
               + "".join(f"; {n}: best 2/3-gram {v:.2f}" for n, v in recurrent.items()))
    study.finish({"models": results, "causal": causal, "transformer_above_recurrent": above if recurrent else None},
                 (causal and above) if recurrent else (False if not causal else None), verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
