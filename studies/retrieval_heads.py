"""Study: retrieval heads (Wu et al. 2024) on the needle / passkey organisms.

For each organism: ``circuits.retrieval_scores`` (copy hits on the needle while the model answers
needle-in-a-haystack prompts at its training length, several depths) counts the retrieval heads
(score > 0.1); ``circuits.causal_check`` then masks the top ``--top`` heads and ``--n-random``
draws of as many random heads, with ``circuits.needle_accuracy`` on fresh prompts as the task
metric. Reproduced when, on some organism, few heads (≤ 25 %) are retrieval heads and masking the
top ones removes at least half of the needle accuracy while random masks remove less than half of
what the top ones remove. Recurrent organisms' "heads" are channel groups (docs/hooks.md). When
there are more retrieval heads than ``--top``, all of them are also masked together (against as
many random heads): a measurement of redundancy, not part of the criterion.

    python -m seqlens.studies.retrieval_heads [--models passkey-mamba-n16 ...]
        [--top 2] [--n-random 10] [--trials 8] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["retrieval_heads"]
KINDS = ("passkey", "needle")  # every built passkey / needle organism, whatever its architecture
DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]


def measure(model, a) -> tuple[dict, list]:
    from seqlens.circuits import causal_check, needle_accuracy, needle_prompts, retrieval_scores

    depths = DEPTHS[::2] if a.smoke else DEPTHS
    s = retrieval_scores(model, depths=depths, n_trials=a.trials, seed=a.seed, progress=True)
    heads = [h for h, _ in s.top(a.top)]
    prompts = needle_prompts(model, depths=depths, n_trials=a.trials, seed=a.seed + 1)  # fresh prompts
    check = causal_check(model, heads, task=lambda m: needle_accuracy(m, prompts), n_random=a.n_random,
                         seed=a.seed, progress=True)
    total = s.n_layers * s.n_heads
    every = [tuple(h) for h in s.settings["heads"]]
    if len(every) > len(heads):  # redundancy: do all retrieval heads together carry the needle?
        all_check = causal_check(model, every, task=lambda m: needle_accuracy(m, prompts), n_random=a.n_random,
                                 seed=a.seed, progress=False)
        masked_all = {"accuracy": all_check.ablated, "random_mean": sum(all_check.random) / len(all_check.random)}
    else:
        masked_all = None
    frac = check.fraction_removed()
    rand = check.random_fraction_removed()
    out = {"n_heads": total, "retrieval_heads": s.settings["heads"], "n_retrieval": len(s.settings["heads"]),
           "scores": s.scores, "top": [list(h) for h in heads], "accuracy": check.baseline,
           "accuracy_top_masked": check.ablated, "accuracy_random_masked": check.random,
           "fraction_removed_top": frac, "fraction_removed_random_mean": sum(rand) / len(rand) if rand else None,
           "counted_trials": s.settings.get("counted_trials"), "all_retrieval_masked": masked_all}
    return out, [s.figure(), check.figure()]


def reproduced_on(r: dict) -> bool:
    rand = r["fraction_removed_random_mean"]
    return (0 < r["n_retrieval"] <= 0.25 * r["n_heads"] and r["fraction_removed_top"] >= 0.5
            and rand is not None and rand < 0.5 * r["fraction_removed_top"])


def main(argv: list[str] | None = None) -> int:
    p = parser("retrieval_heads", __doc__)
    p.add_argument("--models", nargs="+", default=None, help="default: every built organism with passkey / needle in its name")
    p.add_argument("--top", type=int, default=2, help="retrieval heads masked")
    p.add_argument("--n-random", type=int, default=10)
    p.add_argument("--trials", type=int, default=8, help="prompts per depth")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.trials, a.n_random, a.top = ["passkey-mamba-n4"], 2, 2, 1
    from seqlens.models import zoo

    a.models = a.models or [n for n in zoo.names() if any(k in n for k in KINDS)]
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = study.measure_each(a.models, lambda model: measure(model, a), lambda name, r: (
        f"{name}: {r['n_retrieval']}/{r['n_heads']} retrieval heads; accuracy {r['accuracy']:.2f}, "
        f"top-{a.top} masked {r['accuracy_top_masked']:.2f}, random mean "
        f"{sum(r['accuracy_random_masked']) / max(1, len(r['accuracy_random_masked'])):.2f}"
        + (f"; all {r['n_retrieval']} masked {r['all_retrieval_masked']['accuracy']:.2f} (as many random: "
           f"{r['all_retrieval_masked']['random_mean']:.2f})" if r["all_retrieval_masked"] else "")))
    if not results:
        study.finish({}, None, "no passkey / needle organism in the zoo")
        return 0
    if not any(results[n]["accuracy"] > 0 for n in results):
        study.finish({"models": results}, None, "no organism answers the needle prompts (accuracy 0): nothing to mask")
        return 0
    ok = {n: reproduced_on(r) for n, r in results.items()}
    verdict = "; ".join(
        f"{n}: {r['n_retrieval']}/{r['n_heads']} retrieval heads, masking the top {a.top} removes "
        f"{r['fraction_removed_top']:.2f} of the needle accuracy ({r['accuracy']:.2f}), {a.n_random} random masks "
        f"remove {r['fraction_removed_random_mean']:.2f} on average" + (
            f", all {r['n_retrieval']} masked leave {r['all_retrieval_masked']['accuracy']:.2f}"
            if r["all_retrieval_masked"] else "") for n, r in results.items())
    if not any("transformer" in m for m in results):
        study.missing.append("transformer-passkey")
        study.note("no attention passkey organism yet (transformer-passkey): only recurrent channel groups were tested")
    study.finish({"models": results, "reproduced_on": ok}, any(ok.values()), verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
