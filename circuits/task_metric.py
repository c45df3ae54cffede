"""Task metrics for interventions: what ``causal_check`` and ``search_calibration_heads`` measure.

A :class:`TaskMetric` is a named function ``model -> float`` with a direction. :func:`resolve_task`
turns what a user passes as ``task`` into one:

- ``None`` or ``"recipe"``: the metric a zoo organism was trained and evaluated with, on its
  recipe's fixed evaluation batches (``model.recipe``; e.g. ``induction_loss_drop``).
- a metric name (``"loss"`` or a key of :data:`seqlens.tasks.METRICS`): that metric on the
  recipe's evaluation batches.
- a :class:`seqlens.tasks.TaskBatch`: mean next-token cross-entropy on its ``loss_mask`` (lower is
  better).
- a callable ``model -> float`` (higher is better), or a ready :class:`TaskMetric`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

LOWER_IS_BETTER = {"loss", "bits_per_byte"}


@dataclass(frozen=True)
class TaskMetric:
    """``fn(model) -> float``; ``higher_is_better`` says which way "better" points."""

    name: str
    fn: Callable[[Any], float]
    higher_is_better: bool = True

    @torch.no_grad()
    def __call__(self, model) -> float:
        was_training = model.training
        model.eval()
        try:
            return float(self.fn(model))
        finally:
            model.train(was_training)

    def improvement(self, before: float, after: float) -> float:
        """``after − before`` signed so that positive means better."""
        return (after - before) if self.higher_is_better else (before - after)


def _recipe_metric(model, metric: str | None, n_batches: int | None) -> TaskMetric:
    from seqlens.tasks import METRICS, evaluate

    recipe = getattr(model, "recipe", None)
    if recipe is None:
        raise ValueError("task: this model has no training recipe (model.recipe is None; only zoo organisms "
                         "carry one); pass a TaskBatch, a callable model -> float or a TaskMetric")
    name = metric or recipe.metric
    if name != "loss" and name != recipe.metric and name not in METRICS:
        raise ValueError(f"task: unknown metric {name!r}; expected 'recipe', 'loss' or one of {sorted(METRICS)}")
    if name not in ("loss", recipe.metric):
        recipe = recipe.replace(metric=name)
    return TaskMetric(f"{recipe.name}:{name}", lambda m: evaluate(m, recipe, n_batches)[name],
                      name not in LOWER_IS_BETTER)


def _batch_loss(batch) -> TaskMetric:
    def loss(model) -> float:
        logits = model(batch.tokens.to(model.device)).float()
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.to(logits.device).flatten(),
                                               reduction="none")
        mask = batch.loss_mask.to(logits.device).flatten().float()
        return float((ce * mask).sum() / mask.sum().clamp_min(1.0))

    return TaskMetric(f"{batch.task or 'batch'}:loss", loss, higher_is_better=False)


def resolve_task(model, task: Any = None, n_batches: int | None = None) -> TaskMetric:
    """The :class:`TaskMetric` for ``task`` (see the module docstring); ``n_batches`` limits the
    recipe's evaluation batches (default: all the recipe evaluates)."""
    from seqlens.tasks import TaskBatch

    if isinstance(task, TaskMetric):
        return task
    if task is None or task == "recipe":
        return _recipe_metric(model, None, n_batches)
    if isinstance(task, str):
        return _recipe_metric(model, task, n_batches)
    if isinstance(task, TaskBatch):
        return _batch_loss(task)
    if callable(task):
        return TaskMetric(getattr(task, "__name__", "metric"), task, True)
    raise ValueError(f"task: expected None, 'recipe', a metric name, a TaskBatch, a callable model -> float "
                     f"or a TaskMetric, got {type(task).__name__}")
