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


def get_batch(recipe: Recipe, step: int, split: str = "train") -> TaskBatch:
    """The batch for ``step`` (``split="eval"``: the fixed evaluation batch number ``step``)."""
    seed = step_seed(recipe.seed, step, split)
    kwargs = dict(recipe.data_kwargs)
    if split != "train":
        kwargs.update(recipe.eval_kwargs)
    if recipe.data == "corpus:stdlib":
        from seqlens.corpus import StdlibCorpus

        windows = next(iter(StdlibCorpus().batches(recipe.batch_size, kwargs.get("seq_len", 128), seed=seed,
                                                   split="train" if split == "train" else "val", steps=1)))
        x, y = windows[:, :-1], windows[:, 1:]
        return TaskBatch(x, y, torch.ones_like(x, dtype=torch.bool), vocab=CORPUS_VOCAB, task=recipe.data)
    tb = make_task(recipe.data.removeprefix("task:"), batch=recipe.batch_size, seed=seed, **kwargs)
    if split == "train" and recipe.train_on == "all":  # every position but the last (no next token)
        mask = torch.ones_like(tb.loss_mask)
        mask[:, -1] = False
        tb.loss_mask = mask
    return tb


CORPUS_VOCAB = TaskVocab(256, {}, byte_level=True)
"""Vocabulary of ``corpus:stdlib`` recipes: bytes, no special ids."""


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
