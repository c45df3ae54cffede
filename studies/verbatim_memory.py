"""Study: verbatim short-term memory (Armeni, Honey & Linzen 2022) across the text organisms.

Runs ``probes.repeat_surprisal`` (noun lists: list 1, intervening text, list 2 repeated, permuted
or novel; repeat surprisal = 100 · surprisal(list 2) / surprisal(list 1), median over trials with a
bootstrap CI) on every text organism that exists: the Transformer, the LSTM and the others. The
claim reproduces when the Transformer's repeat condition sits well below 100 % (< 70 %, the paper
reports ~10-40 % for GPT-2) and at least 10 points below the LSTM's.

    python -m seqlens.studies.verbatim_memory [--models text-transformer text-lstm ...]
        [--trials 20] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["verbatim_memory"]
ARCHS = ["transformer", "lstm", "mamba", "mingru", "gla", "fox", "retnet", "minlstm"]
TRANSFORMER_BELOW, LSTM_GAP = 70.0, 10.0


def measure(model, a) -> tuple[dict, object]:
    """Repeat / permute / novel medians per set size and intervening length, and their mean."""
    from seqlens.probes import repeat_surprisal

    r = repeat_surprisal(model, set_sizes=a.set_sizes, intervening=a.intervening, n_trials=a.trials,
                         seed=a.seed, n_boot=a.boot, progress=True)
    cells = {cond: {f"k{k}_iv{iv}": r.cell(cond, k, iv)["median"] for k in r.set_sizes for iv in r.intervening}
             for cond in r.conditions}
    means = {cond: sum(v.values()) / len(v) for cond, v in cells.items()}
    return {"median": cells, "mean": means, "mode": r.settings["mode"]}, r.figure()


def main(argv: list[str] | None = None) -> int:
    p = parser("verbatim_memory", __doc__)
    p.add_argument("--models", nargs="+", default=[f"text-{a}" for a in ARCHS])
    p.add_argument("--set-sizes", type=int, nargs="+", default=[3, 7])
    p.add_argument("--intervening", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--boot", type=int, default=500)
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.set_sizes, a.intervening, a.trials, a.boot = ["text-transformer", "text-lstm"], [3], [8], 3, 20
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    results = {}
    for name, model in study.organisms(a.models):
        results[name], fig = measure(model, a)
        study.figure(fig, f"{name}: repeat surprisal (%)")
        study.log(f"{name}: " + ", ".join(f"{c} {v:.1f} %" for c, v in results[name]["mean"].items()))
    t, l = (results.get(n, {}).get("mean", {}).get("repeat") for n in ("text-transformer", "text-lstm"))
    if t is None or l is None:
        study.finish({"models": results}, None, "text-transformer or text-lstm is missing from the zoo")
        return 0
    reproduced = t < TRANSFORMER_BELOW and l - t >= LSTM_GAP
    others = "".join(f", {n.removeprefix('text-')} {r['mean']['repeat']:.1f} %" for n, r in results.items()
                     if n not in ("text-transformer", "text-lstm"))
    verdict = (f"repeat surprisal (mean over cells): Transformer {t:.1f} %, LSTM {l:.1f} %{others}"
               + f"; the claim needs Transformer < {TRANSFORMER_BELOW:.0f} % and ≥ {LSTM_GAP:.0f} points below the LSTM")
    study.finish({"models": results, "transformer_repeat": t, "lstm_repeat": l}, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
