"""Study: the Forgetting Transformer (Lin et al. 2025): forget-gate statistics and length extrapolation.

Forget gates: ``probes.gate_saturation`` on FoX (``f = exp(log f)`` per head, pooled over tokens
of its own data): a head is long-range when f > 0.9 on most tokens (right saturation > 0.5),
local otherwise. Length extrapolation: ``probes.state_collapse`` streams the organism's own data
(stdlib validation text for text organisms) to ``--factor`` × its training length and reports the
loss per training-length bucket, for FoX and for the Transformer trained on the same data. Pairs:
``text-fox`` / ``text-transformer`` and ``fox-passkey`` / ``transformer-passkey``. Reproduced when
FoX has both local and long-range heads (some, not all, long-range) and its loss beyond the
training length rises less than the Transformer's (``--rows`` streams, default 16). Also measured,
not in the criterion: the recipe's own metric (e.g. passkey accuracy) on fresh single sequences of
1, 2 and ``--factor`` training lengths.

The zoo's pairs are used whenever one is built (``fox-passkey`` / ``transformer-passkey`` trained
on the same passkey data, ``text-fox`` / ``text-transformer`` on the same text). Only when the zoo
has no FoX organism at all does the study train a FoX on the text-transformer recipe for
``--steps`` steps (the smoke run: a few steps) and say so; such a FoX is not the organism the
claim is about, and a smoke-trained one is not a measurement at all. Streams run to ``--factor``
× each organism's training length (its task's ``seq_len``).

    python -m seqlens.studies.fox_forgetting [--factor 4] [--steps 300] [--smoke] [--out DIR]
"""

from __future__ import annotations

import math

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["fox_forgetting"]
PAIRS = [("text-fox", "text-transformer"), ("fox-passkey", "transformer-passkey")]


def pairs() -> list[tuple[str, str]]:
    """The FoX / Transformer pairs: the two above, and every built ``X-fox`` with an ``X-transformer``."""
    from seqlens.models import zoo

    built = {n for n in zoo.organisms() if zoo.is_built(n)}  # trained organisms, not the untrained presets
    found = [(n, n[:-3] + "transformer") for n in sorted(built) if n.endswith("-fox") and n[:-3] + "transformer" in built]
    return PAIRS + [p for p in found if p not in PAIRS]


def stand_in_fox(steps: int):
    """A FoX trained here on the text-transformer recipe (same data, width, depth and context)."""
    from seqlens.models import ModelConfig, zoo
    from seqlens.models.train import train
    from seqlens.tasks import task_kwargs

    r = zoo.organisms()["text-transformer"].recipe
    cfg = ModelConfig(arch="fox", vocab_size=r.model.vocab_size, d_model=r.model.d_model, n_layers=r.model.n_layers,
                      n_heads=r.model.n_heads, n_ctx=r.model.n_ctx, positions="none", norm="rmsnorm",
                      mlp="gated", act="silu")
    # its final data without the warm-up curriculum: a short run would otherwise see only the warm-up
    recipe = r.replace(name="text-fox-stand-in", model=cfg, steps=steps, eval_every=steps, eval_batches=2,
                       data_kwargs=task_kwargs(r))
    model = train(recipe, progress=True).model
    model.name, model.recipe = "text-fox (stand-in)", recipe
    return model


def forget_stats(model, seed: int) -> dict:
    from seqlens.probes import gate_saturation

    g = gate_saturation(model, batch=4, seed=seed)
    per_layer = [g.unit_right[i].tolist() for i in range(len(g.layers))]
    heads = [v for layer in per_layer for v in layer]
    long_range = sum(v > 0.5 for v in heads)
    return {"right_saturation_per_head": per_layer, "long_range_heads": long_range, "heads": len(heads),
            "mean_f_pooled": g.mean.tolist()}


def extrapolation(model, factor: int, seed: int, rows: int) -> dict:
    """The loss per position bucket of ``rows`` streams of ``factor`` training lengths (state_collapse),
    and the recipe's own metric on fresh single sequences of 1, 2, ... ``factor`` training lengths."""
    from seqlens.probes import state_collapse
    from seqlens.tasks import evaluate, task_kwargs

    length = int(task_kwargs(model.recipe).get("seq_len", model.cfg.n_ctx)) if model.recipe else model.cfg.n_ctx
    r = state_collapse(model, source="task", n_tokens=factor * length, batch=rows, seed=seed, progress=True)
    loss = [float(x) for x in r.bucket_loss]
    out = {"train_len": r.train_len, "bucket_loss": loss, "bucket_count": [int(c) for c in r.bucket_count],
           "loss_in": r.loss_in, "loss_beyond": r.loss_beyond, "rise": r.loss_beyond - r.loss_in}
    if model.recipe is not None:  # one sequence k times longer than training: the paper's extrapolation
        fresh = model.recipe.replace(seed=model.recipe.seed + 1000 + seed)
        out["metric"] = fresh.metric
        out["metric_at"] = {k: evaluate(model, fresh, overrides={"seq_len": k * length})[fresh.metric]
                            for k in sorted({1, 2, factor})}
    return out


def at_length(pair: dict) -> str:
    """``"; accuracy at 1/2/4x: FoX ..., Transformer ..."`` (empty without a recipe metric)."""
    f, t = pair["fox"].get("metric_at"), pair["transformer"].get("metric_at")
    if not f or not t:
        return ""
    ks = "/".join(f"{k}" for k in f)
    return (f"; {pair['fox']['metric']} at {ks}× the training length: FoX "
            + "/".join(f"{v:.2f}" for v in f.values()) + ", Transformer " + "/".join(f"{v:.2f}" for v in t.values()))


def main(argv: list[str] | None = None) -> int:
    p = parser("fox_forgetting", __doc__)
    p.add_argument("--factor", type=int, default=4, help="stream length in training lengths")
    p.add_argument("--rows", type=int, default=16, help="streams per organism (more scored tokens per bucket)")
    p.add_argument("--steps", type=int, default=300, help="steps of the stand-in FoX when no organism exists")
    a = p.parse_args(argv)
    if a.smoke:
        a.factor, a.steps, a.rows = 2, 4, 2
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = {}
    from seqlens.models import zoo

    any_fox = any(zoo.is_built(f) for f, _ in pairs())  # the stand-in only when the zoo has no FoX at all
    for fox_name, ref_name in pairs():
        fox, ref = study.organism(fox_name), study.organism(ref_name)
        if fox is None and fox_name == "text-fox" and ref is not None and not any_fox:
            study.note(f"organism missing: {fox_name}; a FoX trained here for {a.steps} steps on the text-transformer "
                       "recipe stands in (not the organism of the claim)")
            fox = stand_in_fox(a.steps)
        if fox is None or ref is None:
            study.used = [n for n in study.used if n not in (fox_name, ref_name)]  # loaded, not measured
            continue
        pair = {"fox": {"name": fox.name, **forget_stats(fox, a.seed), **extrapolation(fox, a.factor, a.seed, a.rows)},
                "transformer": {"name": ref_name, **extrapolation(ref, a.factor, a.seed, a.rows)}}
        results[fox_name] = pair
        f, t = pair["fox"], pair["transformer"]
        study.log(f"{fox_name}: {f['long_range_heads']}/{f['heads']} long-range heads; loss rise beyond the training "
                  f"length: FoX {f['rise']:+.3f}, Transformer {t['rise']:+.3f}")
    if not results:
        study.finish({}, None, "organisms missing: no FoX / Transformer pair")
        return 0
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(y=r[k]["bucket_loss"], name=f"{n}: {k}") for n, r in results.items() for k in r])
    fig.update_layout(xaxis_title="position bucket (training lengths)", yaxis_title="loss (nats)")
    study.figure(fig, "loss per training-length bucket")
    ok = {n: (0 < r["fox"]["long_range_heads"] < r["fox"]["heads"]
              and math.isfinite(r["fox"]["rise"]) and r["fox"]["rise"] < r["transformer"]["rise"])
          for n, r in results.items()}
    stand_in = any("stand-in" in r["fox"]["name"] for r in results.values())
    verdict = "; ".join(f"{r['fox']['name']}: {r['fox']['long_range_heads']}/{r['fox']['heads']} long-range heads, "
                        f"loss rise past the training length FoX {r['fox']['rise']:+.3f} vs Transformer "
                        f"{r['transformer']['rise']:+.3f}" + at_length(r) for r in results.values())
    if stand_in:
        verdict += " (stand-in FoX: not a measurement of the claim)"
    study.finish({"pairs": results, "reproduced_on": ok}, None if stand_in else all(ok.values()), verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
