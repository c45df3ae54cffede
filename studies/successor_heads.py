"""Study: successor heads (Gould et al. 2023) on the successor organism.

``circuits.successor_scores`` scores every head by how often its effective OV circuit maps an
ordinal token to its successor (argmax over the set; successor head above 0.4). For the best head,
``circuits.successor.mod_similarity`` tests the mod-10 structure: are the head's OV outputs of items
whose index agrees mod 10 (e.g. ``1`` / ``A`` / ``K`` / ``U``) more alike than the others
(permutation test)? At byte level only single-byte items exist (digits 1-9, letters A-Z), so the
mod-10 classes are small and mostly cross-family. Reproduced when a successor head exists and
the mod-10 structure is significant (p < 0.05).

    python -m seqlens.studies.successor_heads [--model successor-transformer] [--perm 2000] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["successor_heads"]


def mod10(model, head: tuple[int, int], n_perm: int, seed: int) -> dict:
    """The mod-10 test on ``head``'s OV outputs over every ordinal item (index = place in its family)."""
    from seqlens.circuits import ordinal_sets
    from seqlens.circuits.successor import head_outputs, mod_similarity

    ids, labels, names = [], [], []
    for name, items in ordinal_sets(model, gaps=True).items():
        for i, t in enumerate(items):
            if t is not None:
                ids.append(t)
                labels.append((i + 1) % 10)
                names.append(f"{name}[{i + 1}]")
    out = mod_similarity(head_outputs(model, *head, ids), labels, n_perm=n_perm, seed=seed)
    return {**out, "items": names}


def main(argv: list[str] | None = None) -> int:
    p = parser("successor_heads", __doc__)
    p.add_argument("--model", default="successor-transformer")
    p.add_argument("--perm", type=int, default=2000, help="permutations of the mod-10 test")
    a = p.parse_args(argv)
    if a.smoke:
        a.perm = 50
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    model = study.organism(a.model)
    if model is None:
        study.finish({}, None, f"organism missing: {a.model}")
        return 0
    from seqlens.circuits import successor_scores

    s = successor_scores(model)
    study.figure(s.figure(), f"{a.model}: successor scores")
    (layer, head), best = s.top(1)[0]
    per_set = {n: float(v[layer, head]) for n, v in s.settings["per_set"].items()}
    m = mod10(model, (layer, head), a.perm, a.seed)
    measured = {"best_head": [layer, head], "best_score": best, "per_set": per_set,
                "successor_heads": s.settings["heads"], "threshold": s.settings["threshold"],
                "scores": s.scores, "mod10": m}
    reproduced = best > s.settings["threshold"] and m["p_value"] < 0.05
    verdict = (f"best successor head L{layer}H{head} scores {best:.2f} (per set: "
               + ", ".join(f"{n} {v:.2f}" for n, v in per_set.items())
               + f"); {len(s.settings['heads'])} heads above {s.settings['threshold']}; mod-10 structure of its OV "
               f"outputs: same-class minus other-class cosine {m['statistic']:+.3f}, permutation p = {m['p_value']:.3f} "
               f"over {m['n_items']} items")
    study.finish(measured, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
