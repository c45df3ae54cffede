"""The trainer: it learns, it is deterministic, it resumes exactly, and it writes loadable,
self-describing checkpoints. Plus the zoo's organism table and shipped checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import seqlens
from seqlens.models import ModelConfig, zoo
from seqlens.models import train as T


def tiny_recipe(**changes) -> T.Recipe:
    base = T.Recipe(
        name="tiny-induction",
        model=ModelConfig(arch="transformer", vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_ctx=64,
                          attn_only=True, positions="rotary", norm="rmsnorm"),
        data="task:induction", data_kwargs={"seq_len": 24, "vocab_size": 16},
        steps=12, batch_size=8, lr=3e-3, warmup=2, eval_every=6, eval_batches=2, metric="induction_loss_drop")
    return base.replace(**changes)


def test_trainer_lowers_loss():
    recipe = tiny_recipe(steps=80, eval_every=80)
    before = T.evaluate(seqlens.build(recipe.model, seed=recipe.seed), recipe)["loss"]
    result = T.train(recipe, progress=False)
    assert result.metrics["loss"] < before - 0.2, (before, result.metrics)  # uniform: ln 15 = 2.71
    assert result.metrics["induction_loss_drop"] > 0.05  # and it starts using the repeated context


def test_same_seed_gives_identical_weights():
    a = T.train(tiny_recipe(), progress=False).model.state_dict()
    b = T.train(tiny_recipe(), progress=False).model.state_dict()
    c = T.train(tiny_recipe(seed=1), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_on_eval_sees_every_evaluation_without_changing_training():
    """The trajectory callback fires once per evaluation with the live model, and watching (a
    forward in eval mode under no_grad) leaves the trained weights bit-identical."""
    seen: list[tuple[int, bool, bool]] = []

    def watch(model, step):
        model(torch.zeros(1, 8, dtype=torch.long))
        seen.append((step, model.training, torch.is_grad_enabled()))
        return {"watched": float(step)}, False

    watched = T.train(tiny_recipe(), progress=False, on_eval=watch)
    plain = T.train(tiny_recipe(), progress=False)
    assert seen == [(6, False, False), (12, False, False)]
    assert [(h["step"], h["watched"]) for h in watched.history] == [(6, 6.0), (12, 12.0)]
    a, b = watched.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    recipe = tiny_recipe()
    straight = T.train(recipe, tmp_path / "a", progress=False)
    real_get_batch = T.get_batch

    def crash_at_step_8(r, step, split="train"):
        if split == "train" and step == 8:
            raise KeyboardInterrupt
        return real_get_batch(r, step, split)

    monkeypatch.setattr(T, "get_batch", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        T.train(recipe, tmp_path / "b", progress=False, save_every=3)
    assert json.loads((tmp_path / "b" / "resume" / "progress.json").read_text())["step"] == 6
    monkeypatch.setattr(T, "get_batch", real_get_batch)
    resumed = T.train(recipe, tmp_path / "b", progress=False, save_every=3)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not (tmp_path / "b" / "resume").exists()
    assert [h["step"] for h in resumed.history] == [6, 12]


def test_checkpoint_records_recipe_and_metrics_and_loads(tmp_path):
    recipe = tiny_recipe()
    result = T.train(recipe, tmp_path, progress=False)
    record = json.loads((tmp_path / "config.json").read_text())
    assert T.Recipe.from_dict(record["recipe"]) == recipe
    assert record["seed"] == recipe.seed and record["version"] == seqlens.__version__
    assert record["metrics"] == result.metrics and record["train_seconds"] >= 0
    model = seqlens.load(tmp_path)
    assert T.evaluate(model, recipe) == pytest.approx({k: result.metrics[k] for k in ("loss", recipe.metric)})


def test_corpus_recipe_trains_a_step():
    recipe = T.Recipe(name="t", model=ModelConfig(arch="mingru", vocab_size=256, d_model=16, n_layers=1,
                                                  d_hidden=16, pattern_heads=4),
                      data="corpus:stdlib", data_kwargs={"seq_len": 32}, steps=2, batch_size=2,
                      eval_every=2, eval_batches=1, metric="bits_per_byte", warmup=1)
    result = T.train(recipe, progress=False)
    assert 4 < result.metrics["bits_per_byte"] < 9  # ~8 bits/byte untrained, a little less after 2 steps


def test_lr_schedule_warms_up_and_decays():
    r = tiny_recipe(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert T.lr_at(r, 0) == pytest.approx(0.1)
    assert T.lr_at(r, 9) == pytest.approx(1.0)
    assert T.lr_at(r, 10) == pytest.approx(1.0)
    assert T.lr_at(r, 100) == pytest.approx(0.1)
    assert T.lr_at(r, 55) == pytest.approx(0.55)


def test_recipe_validation():
    with pytest.raises(ValueError, match="Recipe.data"):
        tiny_recipe(data="imagenet")
    with pytest.raises(ValueError, match="Recipe.metric"):
        tiny_recipe(metric="bleu")
    with pytest.raises(ValueError, match="Recipe.steps"):
        tiny_recipe(steps=0)
    with pytest.raises(ValueError, match="Recipe.train_on"):
        tiny_recipe(train_on="some")


def test_train_on_all_widens_the_training_mask_only():
    recipe = tiny_recipe(train_on="all")
    task = T.get_batch(tiny_recipe(), 3)
    train, evaluation = T.get_batch(recipe, 3), T.get_batch(recipe, 3, split="eval")
    assert torch.equal(train.tokens, task.tokens)  # same data, wider mask
    assert train.loss_mask[:, :-1].all() and not train.loss_mask[:, -1].any()
    assert torch.equal(evaluation.loss_mask, T.get_batch(tiny_recipe(), 3, split="eval").loss_mask)
    assert T.Recipe.from_dict(recipe.to_dict()) == recipe


# ----------------------------------------------------------------------------- zoo


def test_zoo_table_lists_every_organism():
    rows = {r["name"]: r for r in zoo.table()}
    assert set(rows) == set(zoo.organisms())
    for name in ("induction-attn2", "mqar-transformer", "mqar-mamba", "mqar-mamba2", "mqar-gla", "mqar-mingru",
                 "mqar-lstm"):
        assert name in rows and rows[name]["params"] > 0
    mqar = [rows[f"mqar-{a}"]["params"] for a in ("transformer", "mamba", "mamba2", "gla", "mingru", "lstm")]
    assert max(mqar) / min(mqar) < 1.6  # matched budgets


def test_unbuilt_organism_load_error(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "ORGANISM_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="seqlens zoo build induction-attn2"):
        zoo.load("induction-attn2")
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.load("nope")


# tolerance on a fresh evaluation batch (different seed), per metric
TOLERANCE = {"accuracy": 0.05, "legal_next_accuracy": 0.05, "sequence_accuracy": 0.08, "bits_per_byte": 0.15, "induction_loss_drop": 0.25}


@pytest.mark.slow  # a checkpoint reproduction per shipped organism
@pytest.mark.parametrize("name", [n for n in sorted(zoo.organisms()) if zoo.is_built(n)])
def test_shipped_organism_metric_reproduces(name):
    org = zoo.organisms()[name]
    record = zoo.record(name)
    model = seqlens.load(name)
    fresh = org.recipe.replace(seed=org.recipe.seed + 1000)  # new evaluation batches
    value = T.evaluate(model, fresh, n_batches=org.recipe.eval_batches)[org.recipe.metric]  # same sample size
    assert value == pytest.approx(record["metrics"][org.recipe.metric], abs=TOLERANCE[org.recipe.metric])
