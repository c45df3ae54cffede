"""Study: just read twice (Arora et al. 2024): recall when the context is repeated before the questions.

On every MQAR organism (``mqar-<arch>``: 8 key-value pairs, then queries), query accuracy on fresh
evaluation batches as trained (``context · queries``) and read twice (``context · context ·
queries``, ``tasks.read_twice.read_twice``). The organisms never saw a repeated context in
training, so this is JRT-Prompt zero-shot, as in the paper. Reproduced when reading twice raises
the accuracy of most recurrent organisms (by more than the standard error of the difference).

    python -m seqlens.studies.just_read_twice [--models mqar-mamba mqar-gla ...] [--batches 4] [--smoke] [--out DIR]
"""

from __future__ import annotations

import math

import torch

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["just_read_twice"]
ARCHS = ["transformer", "mamba", "gla", "lstm", "mingru", "fox", "retnet", "minlstm"]


@torch.no_grad()
def accuracies(model, batches: int, seed: int) -> dict:
    """Per-query correctness once and read twice, pooled over ``batches`` evaluation batches."""
    from seqlens.tasks import get_batch
    from seqlens.tasks.read_twice import mqar_context_len, read_twice

    once, twice = [], []
    for i in range(batches):
        b = get_batch(model.recipe, 1000 * seed + i, split="eval")
        r = read_twice(b, mqar_context_len(b))
        once.append(b.correct(model(b.tokens.to(model.device)).cpu())[b.loss_mask])
        twice.append(r.correct(model(r.tokens.to(model.device)).cpu())[r.loss_mask])
    o, t = torch.cat(once).float(), torch.cat(twice).float()
    diff = t - o  # paired: the same queries
    se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {"once": float(o.mean()), "twice": float(t.mean()), "gain": float(diff.mean()), "se": se,
            "queries": len(diff)}


def main(argv: list[str] | None = None) -> int:
    p = parser("just_read_twice", __doc__)
    p.add_argument("--models", nargs="+", default=[f"mqar-{a}" for a in ARCHS])
    p.add_argument("--batches", type=int, default=4, help="evaluation batches per organism")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.batches = ["mqar-mamba", "mqar-transformer"], 1
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = {}
    for name, model in study.organisms(a.models):
        results[name] = {"arch": model.cfg.arch, "recurrent": not model.is_softmax, **accuracies(model, a.batches, a.seed)}
        r = results[name]
        study.log(f"{name}: accuracy once {r['once']:.3f}, read twice {r['twice']:.3f} (gain {r['gain']:+.3f} ± {r['se']:.3f})")
    rec = {n: r for n, r in results.items() if r["recurrent"]}
    if not rec:
        study.finish({"models": results}, None, "no recurrent MQAR organism in the zoo")
        return 0
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(x=list(results), y=[r[k] for r in results.values()], name=k) for k in ("once", "twice")])
    study.figure(fig, "MQAR accuracy: context read once vs twice")
    helped = [n for n, r in rec.items() if r["gain"] > r["se"]]
    verdict = (f"reading twice helps {len(helped)}/{len(rec)} recurrent organisms: "
               + ", ".join(f"{n} {r['once']:.3f} → {r['twice']:.3f}" for n, r in results.items()))
    if max(r["once"] for r in rec.values()) < 0.3:
        study.note("the recurrent MQAR organisms sit near chance (accuracy < 0.3): little recall to improve")
    study.finish({"models": results, "helped": helped}, len(helped) > len(rec) / 2, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
