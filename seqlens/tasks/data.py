"""The data of a training recipe, for the trainer and for analyses alike: the batch of each step
(:func:`get_batch`), the recipe's vocabulary (:func:`task_vocab`) and its evaluation
(:func:`evaluate`). Analyses take their default data from here, never from the trainer.

A recipe is duck-typed (``data``, ``data_kwargs``, ``eval_kwargs``, ``batch_size``, ``seed``,
``train_on``, ``metric``, ``eval_batches``, ``replace``): see :class:`seqlens.models.train.Recipe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import TaskBatch, TaskVocab
from .metrics import METRICS, masked_loss
from .registry import make_task

if TYPE_CHECKING:  # type names only: the trainer imports this module, not the other way round
    from seqlens.models.base import SeqModel
    from seqlens.models.train import Recipe

__all__ = ["evaluate", "get_batch", "step_seed", "task_vocab"]


def step_seed(seed: int, step: int, split: str) -> int:
    """Seed of the batch at ``step``: batches depend only on (seed, step, split), so a resumed run
    sees exactly the data an uninterrupted one would."""
    return (seed * 1_000_003 + step * 7919 + (0 if split == "train" else 104_729)) % (2**63 - 1)


def task_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments of a recipe's final task (``data_kwargs`` without its curriculum):
    what an analysis reads to rebuild the data an organism was trained for. Code outside training
    reads this, never ``recipe.data_kwargs`` itself, whose ``curriculum`` is not a task argument."""
    kwargs = dict(getattr(recipe, "data_kwargs", None) or {})
    kwargs.pop("curriculum", None)
    return kwargs


def get_batch(recipe: Recipe, step: int, split: str = "train") -> TaskBatch:
    """The batch for ``step`` (``split="eval"``: the fixed evaluation batch number ``step``)."""
    seed = step_seed(recipe.seed, step, split)
    kwargs = dict(recipe.data_kwargs)
    stages, data = kwargs.pop("curriculum", []), recipe.data
    if split != "train":
        kwargs.update(recipe.eval_kwargs)
    else:
        stage = curriculum_stage(stages, step)
        if "data" in stage:  # a stage on other data: its own kwargs replace the recipe's
            data, kwargs = stage.pop("data"), {}
        kwargs.update(stage)
    if data == "corpus:stdlib":
        return _corpus_batch(recipe, kwargs, seed, split)
    tb = make_task(data.removeprefix("task:"), batch=recipe.batch_size, seed=seed, **kwargs)
    if split == "train" and recipe.train_on == "all":  # every position but the last (no next token)
        mask = torch.ones_like(tb.loss_mask)
        mask[:, -1] = False
        tb.loss_mask = mask
    return tb


def curriculum_stage(stages: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The data overrides of training ``step`` under a curriculum: ``stages`` (a recipe's
    ``data_kwargs["curriculum"]``) is a list of ``{"until": STEP, **overrides}`` with increasing
    ``until``; the first stage whose ``until`` exceeds ``step`` applies, after the last one the
    plain ``data_kwargs`` (the final task, also used for every evaluation). A stage with a ``data``
    key (``"task:<name>"`` or ``"corpus:stdlib"``) trains on that data instead, with the stage's
    other keys as its whole kwargs (e.g. the induction task as a text model's warm-up)."""
    if not isinstance(stages, list):
        raise ValueError(f"data_kwargs['curriculum']: expected a list of {{'until': step, ...}}, got {stages!r}")
    last = -1
    for stage in stages:  # the whole schedule is checked, whatever the step
        until = stage.get("until") if isinstance(stage, dict) else None
        if isinstance(until, bool) or not isinstance(until, int) or until <= last:
            raise ValueError("data_kwargs['curriculum']: expected stages {'until': step, ...} with increasing "
                             f"integer 'until', got {stage!r}")
        last = until
        source = stage.get("data", "corpus:stdlib")
        if not isinstance(source, str) or not (source.startswith("task:") or source == "corpus:stdlib"):
            raise ValueError(f"data_kwargs['curriculum']: a stage's 'data' must be 'task:<name>' or "
                             f"'corpus:stdlib', got {source!r}")
    current = next((stage for stage in stages if step < stage["until"]), {})
    return {k: v for k, v in current.items() if k != "until"}


CORPUS_VOCAB = TaskVocab(256, {}, byte_level=True)
"""Vocabulary of ``corpus:stdlib`` recipes: bytes, no special ids."""

CORPUS_KWARGS = {"seq_len": 128, "repeat_share": 0.0, "repeat_min": 8, "repeat_max": 96, "repeat_random": 0.5}
"""Data kwargs of ``corpus:stdlib`` recipes and their defaults: window length, and the repeated
spans planted by :func:`seqlens.corpus.plant_repeats` (share of windows, span lengths, share of
random-byte spans); ``repeat_share = 0`` is plain text."""


def _corpus_batch(recipe: Recipe, kwargs: dict[str, Any], seed: int, split: str) -> TaskBatch:
    """Random stdlib windows (training or validation split), with repeated spans planted in a
    ``repeat_share`` of them; ``meta["copied"]`` marks the targets that are copies."""
    from seqlens.corpus import StdlibCorpus, plant_repeats

    unknown = sorted(set(kwargs) - set(CORPUS_KWARGS))
    if unknown:
        raise ValueError(f"data_kwargs: unknown argument(s) {unknown} for corpus:stdlib; known: {sorted(CORPUS_KWARGS)}")
    kw = {**CORPUS_KWARGS, **kwargs}
    windows = next(iter(StdlibCorpus().batches(recipe.batch_size, kw["seq_len"], seed=seed,
                                               split="train" if split == "train" else "val", steps=1)))
    copied = torch.zeros_like(windows, dtype=torch.bool)
    if kw["repeat_share"] > 0:
        windows, copied = plant_repeats(windows, kw["repeat_share"], kw["repeat_min"], kw["repeat_max"],
                                        kw["repeat_random"], seed=seed + 1)
    x, y = windows[:, :-1], windows[:, 1:]
    return TaskBatch(x, y, torch.ones_like(x, dtype=torch.bool), meta={"copied": copied[:, 1:]},
                     vocab=CORPUS_VOCAB, task=recipe.data)


def task_vocab(recipe: Recipe) -> TaskVocab:
    """The :class:`~seqlens.tasks.TaskVocab` of ``recipe``'s data (its special ids: BOS, separators,
    ...); the byte vocabulary (no specials) for ``corpus:stdlib``."""
    if recipe.data == "corpus:stdlib":
        return CORPUS_VOCAB
    return get_batch(recipe.replace(batch_size=1), 0, split="eval").vocab


@torch.no_grad()
def evaluate(model: SeqModel, recipe: Recipe, n_batches: int | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """Metric and loss averaged over the recipe's fixed evaluation batches (``overrides`` replaces
    evaluation data kwargs, e.g. a longer length)."""
    if overrides:
        recipe = recipe.replace(eval_kwargs={**recipe.eval_kwargs, **overrides})
    fn = METRICS[recipe.metric][0]
    was_training = model.training
    model.eval()
    scores, losses = [], []
    for i in range(n_batches or recipe.eval_batches):
        batch = get_batch(recipe, i, split="eval")
        logits = model(batch.tokens)
        scores.append(fn(logits, batch))
        losses.append(masked_loss(logits, batch).item())
    model.train(was_training)
    return {recipe.metric: sum(scores) / len(scores), "loss": sum(losses) / len(losses)}
