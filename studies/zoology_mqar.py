"""Study: MQAR recall vs recurrent state size (Arora et al. 2023, Zoology).

On every MQAR state-size series of the zoo (``mqar-<arch>-n<N>``: the same recipe, only the state
size changes; `mqar-mamba-n4/n8/n16`, `mqar-gla-n4/n8/n16`) and the attention control
(``mqar-transformer``), query accuracy on fresh evaluation batches against the size of the state
the model carries after reading one MQAR sequence, in floats per sequence: the mixer's fixed-size
recurrent state (``StateSpec.key``; Mamba's conv buffer is not counted) summed over layers, or the
whole KV cache for attention. Reproduced when, in every series of ≥ 3 sizes, accuracy rises with
the state (monotone, and the largest state beats the smallest by more than 2 standard errors of the
difference) and the attention control solves the task (accuracy ≥ 0.9).

    python -m seqlens.studies.zoology_mqar [--models mqar-transformer mqar-mamba-n4 ...] [--batches 8] [--smoke] [--out DIR]
"""

from __future__ import annotations

import math
import re

import torch

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["zoology_mqar"]
SERIES = re.compile(r"^mqar-(?P<arch>[a-z0-9]+)-n(?P<n>\d+)$")
DEFAULT = ["mqar-transformer"] + [f"mqar-{a}-n{n}" for a in ("mamba", "gla") for n in (4, 8, 16)]
SOLVED = 0.9  # the attention control must solve MQAR for the comparison to mean anything


@torch.no_grad()
def state_floats(model, tokens: torch.Tensor) -> int:
    """Floats of state one sequence leaves behind (``tokens [L]``): each layer's fixed-size
    recurrent state (its ``StateSpec.key``) or, for a KV cache, every cached tensor."""
    _, state = model.forward_chunk(tokens[None].to(model.device), model.init_state(1))
    total = 0
    for mixer, layer in zip(model.mixers, state.layers):
        spec = mixer.state_spec
        entries = [layer[spec.key]] if spec is not None and spec.fixed_size else list(layer.values())
        total += sum(t.numel() for t in entries)
    return total


@torch.no_grad()
def accuracy(model, batches: int, seed: int) -> dict:
    """Per-query accuracy pooled over ``batches`` fresh evaluation batches, with its standard error."""
    from seqlens.tasks import get_batch
    from seqlens.validate import positive_int

    hits = []
    batches = positive_int("batches", batches)
    for i in range(batches):
        b = get_batch(model.recipe, 1000 * seed + i, split="eval")
        hits.append(b.correct(model(b.tokens.to(model.device)).cpu())[b.loss_mask])
    h = torch.cat(hits).float()
    p = float(h.mean())
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / len(h)), "queries": len(h),
            "state_floats": state_floats(model, b.tokens[0])}


def judge(series: dict[str, list[tuple[int, str]]], results: dict) -> dict[str, dict]:
    """Per series of ≥ 3 sizes: monotone in state size, and largest minus smallest > 2 SE."""
    out = {}
    for arch, members in series.items():
        if len(members) < 3:
            continue
        rows = [results[name] for _, name in sorted(members, key=lambda m: results[m[1]]["state_floats"])]
        acc = [r["accuracy"] for r in rows]
        gain = acc[-1] - acc[0]
        se = math.hypot(rows[-1]["se"], rows[0]["se"])
        monotone = all(b > a for a, b in zip(acc, acc[1:]))
        out[arch] = {"accuracy": acc, "state_floats": [r["state_floats"] for r in rows], "monotone": monotone,
                     "gain": gain, "se": se, "rises": monotone and gain > 2 * se}
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("zoology_mqar", __doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT)
    p.add_argument("--batches", type=int, default=8, help="evaluation batches per organism")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.batches = ["mqar-transformer", "mqar-gla-n4", "mqar-gla-n8", "mqar-gla-n16"], 1
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results, series = {}, {}
    for name, model in study.organisms(a.models):
        results[name] = {"arch": model.cfg.arch, **accuracy(model, a.batches, a.seed)}
        r = results[name]
        study.log(f"{name}: accuracy {r['accuracy']:.3f} ± {r['se']:.3f} ({r['queries']} queries), "
                  f"state {r['state_floats']:,} floats")
        m = SERIES.match(name)
        if m:
            series.setdefault(m["arch"], []).append((int(m["n"]), name))
    judged = judge(series, results)
    control = results.get("mqar-transformer")
    if not judged or control is None:
        study.finish({"models": results, "series": judged}, None,
                     "needs mqar-transformer and a state-size series of ≥ 3 organisms")
        return 0
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=s["state_floats"], y=s["accuracy"], mode="lines+markers", name=arch,
                                error_y={"array": [results[n]["se"] for _, n in sorted(
                                    series[arch], key=lambda m: results[m[1]]["state_floats"])]})
                     for arch, s in judged.items()]
                    + [go.Scatter(x=[control["state_floats"]], y=[control["accuracy"]], mode="markers",
                                  name="transformer (KV cache)", marker={"symbol": "star", "size": 12})])
    fig.update_xaxes(type="log", title="state after one sequence (floats)")
    fig.update_yaxes(title="MQAR accuracy", range=[0, 1.05])
    study.figure(fig, "MQAR accuracy vs state size (Zoology)")
    solved = control["accuracy"] >= SOLVED
    verdict = (f"attention control {control['accuracy']:.3f} with a {control['state_floats']:,}-float KV cache; "
               + "; ".join(f"{arch}: " + ", ".join(f"{acc:.3f}" for acc in s["accuracy"])
                           + f" at {', '.join(f'{n:,}' for n in s['state_floats'])} floats "
                           + ("rises" if s["rises"] else "does not rise monotonically beyond 2 SE")
                           for arch, s in judged.items()))
    reproduced = solved and all(s["rises"] for s in judged.values())
    study.finish({"models": results, "series": judged, "control_solves": solved}, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
