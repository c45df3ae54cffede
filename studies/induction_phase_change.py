"""Study: the induction-head phase change (Olsson et al. 2022) along a training run of induction-attn2.

By default the study reads the ``induction-attn2`` trajectory organism's checkpoints
(``zoo.trajectory``: the model saved at every evaluation of its training run) plus the exact
initial model (the recipe's seed), and measures at each one, on **fresh** evaluation data (another
seed than training's evaluation batches): the evaluation loss, the in-context loss drop (loss on
the 1st minus the 2nd occurrence, the recipe's metric) and the best prefix-matching score
(``circuits.induction_scores``). ``--retrain`` retrains the recipe instead (``--steps``,
``--every``), measuring the same numbers at every evaluation.

The phase change of each curve is the interval of its steepest change; the claim reproduces when
the loss curve's steepest fall and the prefix score's steepest rise fall in the same or adjacent
intervals and a head reaches prefix score ≥ 0.3.

    python -m seqlens.studies.induction_phase_change [--batches 8] [--retrain [--steps 600] [--every 20]]
        [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["induction_phase_change"]
ORGANISM = "induction-attn2"
FRESH_SEED = 1000  # offset of the evaluation data seed: never the batches training evaluated on


def measure(model, recipe, seed: int, batch: int) -> dict[str, float]:
    """Eval loss, in-context loss drop and best prefix score of ``model`` on data of ``recipe``'s
    evaluation split drawn with ``seed`` (``recipe.eval_batches`` batches) and ``batch`` repeated
    random sequences."""
    from seqlens.circuits import induction_scores
    from seqlens.tasks import evaluate

    ev = evaluate(model, recipe.replace(seed=seed))
    prefix = float(induction_scores(model, seed=seed, batch=batch).scores.max())
    return {"loss": ev["loss"], "icl_score": ev[recipe.metric], "prefix_score": prefix}


def from_checkpoints(study: Study, recipe, seed: int, batch: int) -> list[dict]:
    """One row per checkpoint of the trajectory organism (step 0: the recipe's initial model)."""
    import seqlens
    from seqlens.models import zoo
    from seqlens.models.registry import build
    from tqdm.auto import tqdm

    found = zoo.trajectory(ORGANISM)
    history = {h["step"]: h for h in zoo.record(ORGANISM).get("history", [])}
    study.used.append(ORGANISM)
    rows = []
    for step, folder in tqdm([(0, None), *found], desc="checkpoints"):
        model = (build(recipe.model, seed=recipe.seed) if folder is None else seqlens.load(folder)).eval()
        # a checkpoint's config.json has no recipe: without it the finders would not know the
        # task's BOS / special tokens and would score other data than on the shipped organism
        model.recipe, model.name = zoo.organisms()[ORGANISM].recipe, f"{ORGANISM}@{step}"
        row = {"step": step, **measure(model, recipe, seed, batch)}
        row["train_loss"] = history.get(step, {}).get("train_loss")  # recorded while training (one batch)
        rows.append(row)
    return rows


def retrained(recipe, seed: int, batch: int) -> list[dict]:
    """Train ``recipe``; one row per evaluation, measured on the same fresh data as the checkpoints."""
    from seqlens.models.train import train

    def watch(model, step: int) -> tuple[dict[str, float], bool]:
        return {f"fresh_{k}": v for k, v in measure(model, recipe, seed, batch).items()}, False

    result = train(recipe, progress=True, on_eval=watch)
    return [{"step": h["step"], "loss": h["fresh_loss"], "icl_score": h["fresh_icl_score"],
             "prefix_score": h["fresh_prefix_score"], "train_loss": h["train_loss"]} for h in result.history]


def steepest(rows: list[dict], key: str, sign: float) -> int:
    """Index ``i`` of the evaluation interval ``(i-1, i]`` over which ``sign · key`` rises most."""
    deltas = [sign * (rows[i][key] - rows[i - 1][key]) for i in range(1, len(rows))]
    return 1 + max(range(len(deltas)), key=deltas.__getitem__)


def figure(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [r["step"] for r in rows]
    fig.add_trace(go.Scatter(x=steps, y=[r["loss"] for r in rows], name="eval loss, fresh data (nats)"))
    fig.add_trace(go.Scatter(x=steps, y=[r["icl_score"] for r in rows], name="in-context loss drop (nats)"))
    fig.add_trace(go.Scatter(x=steps, y=[r["prefix_score"] for r in rows], name="best prefix score"),
                  secondary_y=True)
    fig.update_xaxes(title="training step")
    return fig


def judge(rows: list[dict]) -> tuple[dict, bool, str]:
    """The phase-change numbers of a trajectory, whether the claim reproduced, and the verdict."""
    i_loss, i_prefix = steepest(rows, "loss", -1.0), steepest(rows, "prefix_score", 1.0)
    i_icl = steepest(rows, "icl_score", 1.0)
    step = [r["step"] for r in rows]
    bumps = [step[i] for i in range(1, len(rows)) if rows[i]["loss"] > rows[i - 1]["loss"]]
    train = [r for r in rows if r.get("train_loss") is not None]
    train_bumps = [b["step"] for a, b in zip(train, train[1:]) if b["train_loss"] > a["train_loss"]]
    jump = rows[i_prefix]["prefix_score"] - rows[i_prefix - 1]["prefix_score"]
    fall = rows[i_loss - 1]["loss"] - rows[i_loss]["loss"]
    measured = {"trajectory": rows, "loss_fall_step": step[i_loss], "loss_fall": fall,
                "prefix_jump_step": step[i_prefix], "icl_jump_step": step[i_icl], "prefix_jump": jump,
                "loss_bump_steps": bumps, "train_loss_bump_steps": train_bumps,
                "final_prefix_score": rows[-1]["prefix_score"], "final_icl_score": rows[-1]["icl_score"],
                "n_points": len(rows)}
    coincide, formed = abs(i_loss - i_prefix) <= 1, rows[-1]["prefix_score"] >= 0.3
    verdict = (f"steepest eval-loss fall (−{fall:.2f} nats) in the interval ending at step {step[i_loss]}, "
               f"steepest prefix-score rise (+{jump:.2f}) ending at step {step[i_prefix]}, in-context loss "
               f"drop jumps ending at step {step[i_icl]}; final best prefix score {rows[-1]['prefix_score']:.2f}"
               + ("" if formed else " (no induction head formed, < 0.3)")
               + ("; they coincide" if coincide else "; they do not coincide"))
    return measured, coincide and formed, verdict


def main(argv: list[str] | None = None) -> int:
    p = parser("induction_phase_change", __doc__)
    p.add_argument("--batches", type=int, default=8, help="fresh evaluation batches per checkpoint (default 8)")
    p.add_argument("--retrain", action="store_true", help="retrain the recipe instead of reading its checkpoints")
    p.add_argument("--steps", type=int, default=None, help="with --retrain: training steps (default: the recipe's)")
    p.add_argument("--every", type=int, default=20, help="with --retrain: steps between evaluations")
    a = p.parse_args(argv)
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    from seqlens.models import zoo

    recipe = zoo.organisms()[ORGANISM].recipe
    batches, prefix_batch = (1, 2) if a.smoke else (a.batches, 10)
    recipe = recipe.replace(eval_batches=batches, **({"batch_size": 8} if a.smoke else {}))
    seed = recipe.seed + FRESH_SEED + a.seed
    if a.retrain:
        steps, every = (a.steps or 40, 10) if a.smoke else (a.steps or recipe.steps, a.every)
        recipe = recipe.replace(steps=steps, eval_every=every, seed=recipe.seed + a.seed)
        study.note(f"retrains the {ORGANISM} recipe ({steps} steps, evaluated every {every})")
        rows = retrained(recipe, seed, prefix_batch)
    else:
        rows = from_checkpoints(study, recipe, seed, prefix_batch)
        study.note(f"reads the {len(rows) - 1} trajectory checkpoints of {ORGANISM} plus its initial model "
                   f"(step 0); every number is measured on fresh data (seed {seed}, {batches} evaluation "
                   f"batches of {recipe.batch_size}, prefix score on {prefix_batch} repeated sequences)")
    study.figure(figure(rows), f"{ORGANISM}: loss, in-context loss drop and prefix score along training")
    measured, reproduced, verdict = judge(rows)
    study.finish(measured, reproduced, verdict, source="retrain" if a.retrain else "checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
