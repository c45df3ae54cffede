"""Study: copy length generalisation by architecture (Jelassi et al. 2024, "Repeat After Me").

Every ``copy-<arch>`` organism was trained to copy strings of 5-20 symbols (``$ s | s .``). For
string lengths ``--lengths`` (inside and beyond training) the exact-match string accuracy
(teacher-forced, ``tasks.copying_eval`` / ``tasks.string_accuracy``) is measured per
architecture; a model's reach is the longest length copied with accuracy ≥ 0.5. Reproduced when
the Transformer copies beyond the training lengths (reach > 20) and reaches further than every
state-space / recurrent organism.

    python -m seqlens.studies.copying [--models copy-transformer copy-mamba ...] [--lengths 5 10 20 40 80]
        [--batch 64] [--smoke] [--out DIR]
"""

from __future__ import annotations

import torch

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["copying"]
ARCHS = ["transformer", "mamba", "gla", "lstm", "mingru", "fox", "retnet", "minlstm"]
TRAIN_MAX, REACH = 20, 0.5


@torch.no_grad()
def accuracy_by_length(model, lengths: list[int], batch: int, seed: int) -> dict[int, float]:
    from seqlens.tasks import copying_eval, string_accuracy

    limit = model.context_limit
    out = {}
    for n, b in copying_eval([n for n in lengths if limit is None or 2 * n + 3 <= limit], batch=batch, seed=seed).items():
        out[n] = string_accuracy(b, model(b.tokens.to(model.device)).cpu())
    return out


def figure(results: dict):
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=list(r["accuracy"]), y=list(r["accuracy"].values()), mode="lines+markers", name=n)
                     for n, r in results.items()])
    fig.add_vline(x=TRAIN_MAX, line_dash="dash", annotation_text="longest training string")
    fig.update_layout(xaxis_title="string length", yaxis_title="exact-match accuracy", xaxis_type="log")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = parser("copying", __doc__)
    p.add_argument("--models", nargs="+", default=[f"copy-{a}" for a in ARCHS])
    p.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 15, 20, 25, 30, 40, 60, 80])
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args(argv)
    if a.smoke:
        a.lengths, a.batch = [10, 40], 4
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = {}
    for name, model in study.organisms(a.models):
        acc = accuracy_by_length(model, a.lengths, a.batch, a.seed)
        reach = max([n for n, v in acc.items() if v >= REACH], default=0)
        results[name] = {"arch": model.cfg.arch, "accuracy": acc, "reach": reach}
        study.log(f"{name}: " + ", ".join(f"{n}: {v:.2f}" for n, v in acc.items()) + f"; reach {reach}")
    if "copy-transformer" not in results:
        study.finish({"models": results}, None, "organism missing: copy-transformer")
        return 0
    study.figure(figure(results), "copying: exact-match accuracy by string length")
    t = results["copy-transformer"]["reach"]
    others = {n: r["reach"] for n, r in results.items() if n != "copy-transformer"}
    reproduced = t > TRAIN_MAX and all(t > v for v in others.values()) if others else None
    verdict = (f"reach (longest length copied with accuracy ≥ {REACH}): copy-transformer {t}"
               + "".join(f", {n} {v}" for n, v in others.items())
               + f"; training strings are 5-{TRAIN_MAX} long")
    study.finish({"models": results, "train_max": TRAIN_MAX}, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
