"""Zoo v2 (issue #16): text windows with repeated spans, MQAR curricula, the trainer's on_eval
callback (analysis metrics, early stop, trajectory checkpoints), the shipped organisms' recorded
analysis metrics on fresh data, and the zoo's size budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import seqlens
from seqlens.models import ModelConfig, build, zoo
from seqlens.models import train as T
from seqlens.models.recipes import Organism
from seqlens.tasks.data import curriculum_stage


def corpus_recipe(**kwargs) -> T.Recipe:
    return T.Recipe(name="t", model=ModelConfig(arch="mingru", vocab_size=256, d_model=16, n_layers=1,
                                                d_hidden=16, pattern_heads=4),
                    data="corpus:stdlib", data_kwargs={"seq_len": 64, **kwargs}, steps=2, batch_size=64,
                    eval_every=2, eval_batches=1, metric="bits_per_byte", warmup=1)


def test_corpus_batches_plant_repeats_in_training_only_when_eval_is_plain():
    recipe = corpus_recipe(repeat_share=0.5, repeat_min=4, repeat_max=16).replace(eval_kwargs={"repeat_share": 0.0})
    batch = T.get_batch(recipe, 5)
    copied = batch.meta["copied"]  # aligned with the targets
    assert 0.25 < copied.any(1).float().mean() < 0.75
    for i in copied.any(1).nonzero().flatten().tolist():
        idx = copied[i].nonzero().flatten()
        span = batch.targets[i, idx]
        full = torch.cat([batch.tokens[i, :1], batch.targets[i]])  # the whole window
        starts = range(0, int(idx[0]) + 1 - len(idx) + 1)
        assert any(torch.equal(full[a:a + len(idx)], span) for a in starts)  # copied from earlier
    assert not T.get_batch(recipe, 5, split="eval").meta["copied"].any()
    plain = T.get_batch(corpus_recipe(), 5)
    assert not plain.meta["copied"].any()


def test_corpus_recipe_rejects_unknown_data_kwargs():
    with pytest.raises(ValueError, match="repeat_shar"):
        T.get_batch(corpus_recipe(repeat_shar=0.5), 0)


def test_curriculum_stages_apply_by_step_and_never_at_evaluation():
    stages = [{"until": 3, "n_pairs": 2}, {"until": 6, "n_pairs": 4}]
    assert [curriculum_stage(stages, s).get("n_pairs") for s in (0, 2, 3, 5, 6, 100)] == [2, 2, 4, 4, None, None]
    recipe = T.Recipe(name="m", model=ModelConfig(arch="transformer", vocab_size=32, d_model=16, n_layers=1,
                                                  n_heads=2, n_ctx=32),
                      data="task:mqar", data_kwargs={"n_pairs": 8, "vocab_size": 32, "seq_len": 32,
                                                     "curriculum": stages}, batch_size=2)
    assert T.get_batch(recipe, 0).meta["keys"].shape == (2, 2)
    assert T.get_batch(recipe, 4).meta["keys"].shape == (2, 4)
    assert T.get_batch(recipe, 6).meta["keys"].shape == (2, 8)
    assert T.get_batch(recipe, 0, split="eval").meta["keys"].shape == (2, 8)
    with pytest.raises(ValueError, match="curriculum"):
        curriculum_stage([{"until": 5}, {"until": 5}], 0)


def test_a_curriculum_stage_can_train_on_other_data():
    """A stage with ``data`` trains on that task with the stage's kwargs only (the text
    Transformer's induction warm-up); evaluation and later steps use the recipe's own data."""
    stages = [{"until": 2, "data": "task:induction", "seq_len": 32, "vocab_size": 256, "min_prefix": 4}]
    recipe = corpus_recipe(repeat_share=0.5, repeat_max=16, curriculum=stages)
    warm, text = T.get_batch(recipe, 1), T.get_batch(recipe, 2)
    assert warm.task == "induction" and warm.tokens.shape == (64, 32) and "prefix_len" in warm.meta
    assert text.task == "corpus:stdlib" and text.tokens.shape == (64, 64)
    assert T.get_batch(recipe, 0, split="eval").task == "corpus:stdlib"
    with pytest.raises(ValueError, match="'data' must be"):
        curriculum_stage([{"until": 2, "data": "induction"}], 5)


def tiny_induction() -> T.Recipe:
    return T.Recipe(
        name="tiny-induction", model=ModelConfig(arch="transformer", vocab_size=16, d_model=32, n_layers=2,
                                                 n_heads=2, n_ctx=64, attn_only=True, norm="rmsnorm"),
        data="task:induction", data_kwargs={"seq_len": 24, "vocab_size": 16}, steps=12, batch_size=8,
        warmup=2, eval_every=3, eval_batches=1, metric="induction_loss_drop")


def test_on_eval_metrics_join_the_history_and_stop_training(tmp_path):
    calls = []

    def on_eval(model, step):
        assert not model.training and not torch.is_grad_enabled()
        calls.append(step)
        return {"probe": float(step)}, step >= 6

    result = T.train(tiny_induction(), tmp_path / "run", progress=False, on_eval=on_eval)
    assert calls == [3, 6] and result.stopped_at == 6
    assert [h["probe"] for h in result.history] == [3.0, 6.0] and result.metrics["probe"] == 6.0
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["stopped_at"] == 6 and record["history"][-1]["step"] == 6
    full = T.train(tiny_induction(), progress=False, on_eval=lambda m, s: ({}, False))
    assert full.stopped_at is None and full.history[-1]["step"] == 12


def test_build_organism_saves_a_trajectory_and_stops_on_its_probe_targets(tmp_path, monkeypatch):
    org = Organism(tiny_induction(), "induction", probes=("score",), stop_when={"score": 9.0}, trajectory=True)
    monkeypatch.setattr(zoo, "organisms", lambda: {"tiny-induction": org})
    monkeypatch.setattr(zoo, "ORGANISM_DIR", tmp_path)
    with pytest.raises(ValueError, match="probes"):
        zoo.build_organism("tiny-induction", progress=False)
    seen = []
    probes = {"score": (lambda model, seed: seen.append(seed) or 3.0 * len(seen), True)}
    metrics = zoo.build_organism("tiny-induction", progress=False, probes=probes)
    assert metrics["score"] == 9.0 and seen == [0, 0, 0]  # stopped at the third evaluation (step 9)
    steps = [s for s, _ in zoo.trajectory("tiny-induction")]
    assert steps == [3, 6, 9]
    for step, folder in zoo.trajectory("tiny-induction"):
        assert seqlens.load(folder).cfg == org.recipe.model
        assert seqlens.load(folder).recipe == org.recipe  # a checkpoint knows its task on its own
        assert json.loads((folder / "config.json").read_text())["metrics"]["score"] == 3.0 * steps.index(step) + 3
    assert zoo.record("tiny-induction")["stopped_at"] == 9


def test_stop_rule_waits_for_stop_after(tmp_path, monkeypatch):
    """A target that holds from the first evaluation stops training only from ``stop_after`` on (a
    curriculum's warm-up must not end the run)."""
    org = Organism(tiny_induction(), "induction", probes=("score",), stop_when={"score": 1.0}, stop_after=7)
    monkeypatch.setattr(zoo, "organisms", lambda: {"tiny-induction": org})
    monkeypatch.setattr(zoo, "ORGANISM_DIR", tmp_path)
    zoo.build_organism("tiny-induction", progress=False, probes={"score": (lambda model, seed: 2.0, True)})
    record = zoo.record("tiny-induction")
    assert record["stopped_at"] == 9 and [h["step"] for h in record["history"]] == [3, 6, 9]


# ----------------------------------------------------------------------------- shipped organisms

# recorded analysis metric vs a fresh measurement (another seed), per probe
PROBE_TOLERANCE = {"induction_prefix": 0.1, "repeat_surprisal": 15.0}
PROBED = [n for n, o in sorted(zoo.organisms().items()) if o.probes and zoo.is_built(n)]


@pytest.mark.slow  # the induction finder and the memory probe on each probed organism
@pytest.mark.parametrize("name", PROBED)
def test_shipped_probe_metrics_reproduce_on_fresh_data(name):
    from seqlens.zoo_probes import PROBES

    org, record = zoo.organisms()[name], zoo.record(name)
    model = seqlens.load(name).eval()
    # a probe added to the organism after its checkpoint was trained is not in its record
    # (text-fox, text-minlstm: trained with repeat_surprisal only; `zoo list` prints "-")
    recorded = [p for p in org.probes if p in record["metrics"]]
    assert recorded, f"{name}: none of its probes {org.probes} was recorded in training"
    for probe in recorded:
        value = PROBES[probe][0](model, 1)  # seed 1: training measured with seed 0
        assert value == pytest.approx(record["metrics"][probe], abs=PROBE_TOLERANCE[probe]), probe


def test_text_transformer_targets_hold_on_fresh_data():
    """Issue #16: the text Transformer forms induction heads (best prefix score >= 0.3 on repeated
    random bytes) and has verbatim memory (repeat surprisal well below 100 %), measured with a seed
    (2) that training's probes (seed 0) and the reproduction test (seed 1) never used."""
    from seqlens.zoo_probes import PROBES

    model = seqlens.load("text-transformer").eval()
    assert PROBES["induction_prefix"][0](model, 2) >= 0.3
    assert PROBES["repeat_surprisal"][0](model, 2) <= 60.0


def test_mqar_transformer_reaches_its_target():
    assert zoo.record("mqar-transformer")["metrics"]["accuracy"] >= 0.9


ZOO_BUDGET = 48 * 2**20  # issue #16: everything shipped under models/organisms


def test_the_zoo_fits_its_size_budget():
    total = sum(p.stat().st_size for p in Path(zoo.ORGANISM_DIR).rglob("*") if p.is_file())
    assert total <= ZOO_BUDGET, f"{total / 2**20:.1f} MB shipped"


def test_every_shipped_checkpoint_was_trained_by_its_current_recipe():
    """A recipe changed without retraining would make `zoo list` and the docs describe a model that
    is not the one shipped."""
    stale = [n for n in zoo.organisms() if zoo.is_built(n) and
             T.recipe_hash(T.Recipe.from_dict(zoo.record(n)["recipe"])) != T.recipe_hash(zoo.organisms()[n].recipe)]
    assert stale == []


def test_induction_attn2_trajectory_has_eight_checkpoints_ending_at_the_shipped_weights():
    steps = zoo.trajectory("induction-attn2")
    assert len(steps) >= 8 and steps[-1][0] == zoo.organisms()["induction-attn2"].recipe.steps
    final = seqlens.load(steps[-1][1]).state_dict()
    shipped = seqlens.load("induction-attn2").state_dict()
    assert all(torch.equal(final[k], shipped[k]) for k in shipped)
    assert all(seqlens.load(d).recipe == seqlens.load("induction-attn2").recipe for _, d in steps)
    scores = [json.loads((d / "config.json").read_text())["metrics"]["induction_prefix"] for _, d in steps]
    assert scores[0] < 0.3 < scores[-1]  # the phase change happens inside the trajectory


def test_analyses_read_the_final_task_not_the_curriculum():
    """A curriculum is a training schedule, not a task argument: the collapse probe's task stream
    and the passkey defaults read ``task_kwargs`` (before, the 'task' stream passed ``curriculum``
    to the task generator and failed on every curriculum organism)."""
    from seqlens.probes.collapse_sources import _Generated
    from seqlens.tasks import task_kwargs

    recipe = T.Recipe(name="m", model=ModelConfig(arch="mamba", vocab_size=32, d_model=16, n_layers=1, d_state=4),
                      data="task:mqar", data_kwargs={"n_pairs": 8, "vocab_size": 32, "seq_len": 32,
                                                     "curriculum": [{"until": 3, "n_pairs": 2}]}, batch_size=2)
    assert task_kwargs(recipe) == {"n_pairs": 8, "vocab_size": 32, "seq_len": 32}
    assert "curriculum" in recipe.data_kwargs  # the recipe itself is untouched
    model = build(recipe.model)
    model.recipe = recipe
    tokens, _ = _Generated(model, "task", batch=2, seed=0).get(0, 80)
    assert tokens.shape == (2, 80) and int(tokens.max()) < 32
