"""Study: attention sinks, hidden sinks and ACT calibration (Yu et al. 2024) on the softmax organisms.

For each organism: ``circuits.sink_scores`` on its evaluation data gives the first-token sink
mass per head and the hidden sinks (keys ``j > 0`` with received attention ``r(j) > τ``). ACT's
rule (``min_queries=1``) also flags the last columns of the window, where ``r(j)`` averages only a
few queries and local heads push it over τ: that end-of-window artefact is filtered by requiring
``--min-queries`` (default T/8) queries per key, and both counts are reported. ACT's effect on
task accuracy: ``circuits.search_calibration_heads`` picks heads on one evaluation batch and
``circuits.calibration_metric`` measures the picked heads on a fresh batch (held out, so the
search cannot overfit the score). Reproduced when first-token sinks (mass ≥ 0.3 in some head) and
filtered hidden sinks exist and calibration improves the held-out metric on some organism.

    python -m seqlens.studies.sinks_act [--models text-transformer icll-transformer ...]
        [--min-queries N] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["sinks_act"]
DEFAULT_MODELS = ["text-transformer", "text-fox", "icll-transformer", "mqar-transformer", "successor-transformer",
                  "copy-transformer", "induction-attn2"]
SINK_MASS = 0.3


def count(sinks: list[list[list[int]]]) -> int:
    return sum(len(h) for layer in sinks for h in layer)


def sinks(model, a) -> tuple[dict, object]:
    from seqlens.circuits import sink_scores

    raw = sink_scores(model, batch=a.batch, seed=a.seed)
    T = raw.received.shape[-1]
    q = a.min_queries or max(2, T // 8)
    kept = sink_scores(model, batch=a.batch, seed=a.seed, min_queries=q)
    (l, h), mass = raw.top(1)[0]
    out = {"window": T, "min_queries": q, "best_first_token_head": [l, h], "best_first_token_mass": mass,
           "mean_first_token_mass": float(raw.scores.mean()), "hidden_raw": count(raw.hidden_sinks),
           "hidden_filtered": count(kept.hidden_sinks), "hidden_sinks": kept.hidden_sinks}
    out["end_of_window_artefacts"] = out["hidden_raw"] - out["hidden_filtered"]
    return out, raw.figure()


def act(model, seed: int) -> dict:
    """ACT's head search on evaluation batch ``seed`` and its held-out effect on batch ``seed + 1``."""
    from seqlens.circuits import calibration_metric, search_calibration_heads
    from seqlens.tasks import get_batch

    exclude = "act" if model.cfg.n_layers > 3 else []
    search = search_calibration_heads(model, task=get_batch(model.recipe, seed, split="eval"),
                                      exclude_layers=exclude, progress=False)
    held = calibration_metric(model, search.kept, task=get_batch(model.recipe, seed + 1, split="eval"))
    return {"metric": held.metric, "kept_heads": [list(x) for x in search.kept], "search_before": search.baseline,
            "search_after": search.combined, "heldout_before": held.before, "heldout_after": held.after,
            "heldout_improvement": held.improvement if search.kept else 0.0, "excluded_layers": exclude}


def main(argv: list[str] | None = None) -> int:
    p = parser("sinks_act", __doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--batch", type=int, default=8, help="sequences for the sink scores")
    p.add_argument("--min-queries", type=int, default=None, help="queries a hidden sink needs (default T/8)")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.batch = ["induction-attn2"], 2
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = {}
    for name, model in study.organisms(a.models):
        if not model.is_softmax:
            study.note(f"{name}: not a softmax model, skipped (ACT recalibrates softmax rows)")
            continue
        results[name], fig = sinks(model, a)
        study.figure(fig, f"{name}: attention sinks")
        results[name]["act"] = act(model, a.seed)
        r, c = results[name], results[name]["act"]
        study.log(f"{name}: first-token mass max {r['best_first_token_mass']:.2f}; hidden sinks {r['hidden_raw']} "
                  f"by ACT's rule, {r['hidden_filtered']} with ≥ {r['min_queries']} queries; ACT on "
                  f"{len(c['kept_heads'])} heads: {c['metric']} {c['heldout_before']:.4f} → {c['heldout_after']:.4f}")
    if not results:
        study.finish({}, None, "no softmax organism in the zoo")
        return 0
    first = any(r["best_first_token_mass"] >= SINK_MASS for r in results.values())
    hidden = any(r["hidden_filtered"] > 0 for r in results.values())
    helps = any(r["act"]["heldout_improvement"] > 0 for r in results.values())
    verdict = (f"first-token sinks (mass ≥ {SINK_MASS}) in {sum(r['best_first_token_mass'] >= SINK_MASS for r in results.values())}"
               f"/{len(results)} organisms; hidden sinks {sum(r['hidden_raw'] for r in results.values())} by ACT's rule, "
               f"{sum(r['hidden_filtered'] for r in results.values())} after dropping the end-of-window artefact; "
               f"ACT improves the held-out metric on {sum(r['act']['heldout_improvement'] > 0 for r in results.values())}"
               f"/{len(results)} organisms")
    study.finish({"models": results, "first_token_sinks": first, "hidden_sinks": hidden, "act_helps": helps},
                 first and hidden and helps, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
