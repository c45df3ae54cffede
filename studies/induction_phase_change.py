"""Study: the induction-head phase change (Olsson et al. 2022) along a training run of induction-attn2.

Retrains the ``induction-attn2`` recipe (repeated random tokens, 2-layer attention-only
Transformer) and, at every evaluation (``--every`` steps), records the evaluation loss, the
in-context loss drop (loss on the 1st minus the 2nd occurrence, the recipe's metric) and the best
prefix-matching score (``circuits.induction_scores``). The phase change of each curve is the
interval of its steepest change; the claim reproduces when the loss curve's steepest fall and the
prefix score's steepest rise fall in the same or adjacent intervals. A shipped trajectory
organism would make the retraining unnecessary; until one exists the study trains (about a minute
on 2 cores for the full run).

    python -m seqlens.studies.induction_phase_change [--steps 600] [--every 20] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["induction_phase_change"]
ORGANISM = "induction-attn2"


def trajectory(recipe, seed: int) -> list[dict]:
    """Train ``recipe``; one row per evaluation: step, loss, in-context loss drop, best prefix score."""
    from seqlens.circuits import induction_scores
    from seqlens.models.train import train

    def watch(model, step: int) -> tuple[dict[str, float], bool]:
        return {"prefix_score": float(induction_scores(model, seed=seed).scores.max())}, False

    result = train(recipe, progress=False, on_eval=watch)
    return [{"step": h["step"], "loss": h["loss"], "train_loss": h["train_loss"],
             "icl_score": h["induction_loss_drop"], "prefix_score": h["prefix_score"]} for h in result.history]


def steepest(rows: list[dict], key: str, sign: float) -> int:
    """Index ``i`` of the evaluation interval ``(i-1, i]`` over which ``sign · key`` rises most."""
    deltas = [sign * (rows[i][key] - rows[i - 1][key]) for i in range(1, len(rows))]
    return 1 + max(range(len(deltas)), key=deltas.__getitem__)


def figure(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [r["step"] for r in rows]
    fig.add_trace(go.Scatter(x=steps, y=[r["loss"] for r in rows], name="eval loss (nats)"))
    fig.add_trace(go.Scatter(x=steps, y=[r["icl_score"] for r in rows], name="in-context loss drop (nats)"))
    fig.add_trace(go.Scatter(x=steps, y=[r["prefix_score"] for r in rows], name="best prefix score"),
                  secondary_y=True)
    fig.update_xaxes(title="training step")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = parser("induction_phase_change", __doc__)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--every", type=int, default=20, help="steps between evaluations")
    a = p.parse_args(argv)
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    from seqlens.models import zoo

    recipe = zoo.organisms()[ORGANISM].recipe
    if a.smoke:
        a.steps, a.every = a.steps or 40, 10
        recipe = recipe.replace(batch_size=8, eval_batches=1)
    recipe = recipe.replace(steps=a.steps or recipe.steps, eval_every=a.every, seed=recipe.seed + a.seed)
    study.note(f"no trajectory organism in the zoo yet: the study retrains the {ORGANISM} recipe "
               f"({recipe.steps} steps, evaluated every {recipe.eval_every})")
    rows = trajectory(recipe, a.seed)
    study.figure(figure(rows), f"{ORGANISM}: loss, in-context loss drop and prefix score along training")
    i_loss, i_prefix = steepest(rows, "loss", -1.0), steepest(rows, "prefix_score", 1.0)
    i_icl = steepest(rows, "icl_score", 1.0)
    step = [r["step"] for r in rows]
    bumps = [step[i] for i in range(1, len(rows)) if rows[i]["loss"] > rows[i - 1]["loss"]]
    jump = rows[i_prefix]["prefix_score"] - rows[i_prefix - 1]["prefix_score"]
    measured = {"trajectory": rows, "loss_fall_step": step[i_loss], "prefix_jump_step": step[i_prefix],
                "icl_jump_step": step[i_icl], "prefix_jump": jump, "loss_bump_steps": bumps,
                "final_prefix_score": rows[-1]["prefix_score"], "final_icl_score": rows[-1]["icl_score"],
                "interval_steps": recipe.eval_every}
    coincide = abs(i_loss - i_prefix) <= 1
    formed = rows[-1]["prefix_score"] >= 0.3
    reproduced = coincide and formed
    verdict = (f"steepest loss fall at step {step[i_loss]}, steepest prefix-score rise (+{jump:.2f}) at step "
               f"{step[i_prefix]}, in-context loss drop jumps at step {step[i_icl]}; final best prefix score "
               f"{rows[-1]['prefix_score']:.2f}" + ("" if formed else " (no induction head formed, < 0.3)")
               + ("; they coincide" if coincide else "; they do not coincide"))
    study.finish(measured, reproduced, verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
