"""Study: outlier channels and simulated 8-bit quantisation (Mamba-PTQ, Pierro & Abreu 2024).

For each text organism: ``probes.outlier_channels`` (input channels of every linear layer with
``max|x| > μ + 6σ``) and ``probes.quantize.ptq_loss`` (W8A8 fake quantisation, per-tensor
activations; the loss in full precision, quantised, and quantised with the outlier channels kept in
full precision), on held-out stdlib windows. The claim reproduces on the Mamba organism when it has
outlier channels, 8-bit quantisation costs loss (> 0.01 nats) and keeping the outliers recovers at
least half of that cost.

    python -m seqlens.studies.outliers_ptq [--models text-mamba ...] [--windows 16] [--seq-len 128]
        [--bits 8] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["outliers_ptq"]
ARCHS = ["mamba", "transformer", "lstm", "mingru", "gla", "fox", "retnet", "minlstm"]
MIN_COST, MIN_RECOVERED = 0.01, 0.5


def measure(model, a) -> tuple[dict, list]:
    from seqlens.corpus import StdlibCorpus
    from seqlens.probes import outlier_channels
    from seqlens.probes.quantize import ptq_loss

    tokens = StdlibCorpus().eval_windows(a.seq_len, "val", max_windows=a.windows)
    o = outlier_channels(model, tokens=tokens, progress=False)
    q = ptq_loss(model, bits=a.bits, outliers=o, tokens=tokens)
    cost = q.loss["quant"] - q.loss["fp"]
    recovered = (q.loss["quant"] - q.loss["kept"]) / cost if cost > 0 else None
    layers = {n: c for n, c in zip(o.layers, o.outliers) if c}
    out = {"outlier_layers": len(layers), "outlier_channels": q.n_kept, "n_layers": len(o.layers),
           "outliers": layers, "loss": q.loss, "acc": q.acc, "cost": cost, "recovered": recovered,
           "loss_zeroed_all": o.loss_all, "residual_consistency": o.consistency}
    return out, [o.figure(), q.figure()]


def main(argv: list[str] | None = None) -> int:
    p = parser("outliers_ptq", __doc__)
    p.add_argument("--models", nargs="+", default=[f"text-{a}" for a in ARCHS])
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bits", type=int, default=8)
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.windows, a.seq_len = ["text-mamba"], 2, 32
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = study.measure_each(a.models, lambda model: measure(model, a), lambda name, r: (
        f"{name}: {r['outlier_channels']} outlier channels in {r['outlier_layers']}/{r['n_layers']} "
        f"layers; loss fp {r['loss']['fp']:.4f}, {a.bits}-bit {r['loss']['quant']:.4f}, "
        f"outliers kept {r['loss']['kept']:.4f}"))
    m = results.get("text-mamba")
    if m is None:
        study.finish({"models": results}, None, "text-mamba is missing from the zoo")
        return 0
    rec = m["recovered"]
    reproduced = m["outlier_channels"] > 0 and m["cost"] > MIN_COST and rec is not None and rec >= MIN_RECOVERED
    verdict = (f"text-mamba: {m['outlier_channels']} outlier channels; {a.bits}-bit quantisation costs "
               f"{m['cost']:+.4f} nats, keeping the outliers in full precision recovers "
               + ("n/a" if rec is None else f"{100 * rec:.0f} %") + " of it"
               + "".join(f"; {n}: {r['outlier_channels']} outliers, cost {r['cost']:+.4f}"
                         for n, r in results.items() if n != "text-mamba"))
    study.finish({"models": results}, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
