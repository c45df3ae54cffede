"""Evaluation metrics over a :class:`~seqlens.tasks.TaskBatch`: the masked loss the trainer
minimises and the named metrics (:data:`METRICS`) a recipe reports."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from .base import TaskBatch
from .icll import legal_next_accuracy

__all__ = ["METRICS", "masked_loss"]


def masked_loss(logits: Tensor, batch: TaskBatch) -> Tensor:
    """Mean cross-entropy over the positions in ``batch.loss_mask``."""
    flat = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    mask = batch.loss_mask.flatten().float()
    return (flat * mask).sum() / mask.sum().clamp_min(1.0)


def _accuracy(logits: Tensor, batch: TaskBatch) -> float:
    hit = (logits.argmax(-1) == batch.targets) & batch.loss_mask
    return hit.sum().item() / max(1, batch.loss_mask.sum().item())


def _bits_per_byte(logits: Tensor, batch: TaskBatch) -> float:
    return masked_loss(logits, batch).item() / math.log(2)


def _sequence_accuracy(logits: Tensor, batch: TaskBatch) -> float:
    """Fraction of sequences whose every masked position is predicted exactly (string accuracy)."""
    wrong = (logits.argmax(-1) != batch.targets) & batch.loss_mask
    return (~wrong.any(-1)).float().mean().item()


def _induction_loss_drop(logits: Tensor, batch: TaskBatch) -> float:
    """Mean loss predicting tokens 2..m of the first occurrence of the repeated block minus the
    loss predicting the same tokens in the second occurrence (Olsson et al.'s in-context learning
    score, in nats); positive = the model uses the context."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    nll = nll.view_as(batch.targets)
    first, second = batch.meta["first_mask"], batch.meta["second_mask"]
    return (nll[first].mean() - nll[second].mean()).item()


def _legal_next_accuracy(logits: Tensor, batch: TaskBatch) -> float:
    """ICLL: fraction of predictions that are legal next symbols under the sequence's DFA."""
    return legal_next_accuracy(batch, logits)


METRICS: dict[str, tuple[Callable[[Tensor, TaskBatch], float], str]] = {
    "legal_next_accuracy": (_legal_next_accuracy, "ICLL: predictions legal under the DFA"),
    "accuracy": (_accuracy, "masked next-token accuracy"),
    "bits_per_byte": (_bits_per_byte, "validation bits per byte"),
    "sequence_accuracy": (_sequence_accuracy, "exact-match string accuracy"),
    "induction_loss_drop": (_induction_loss_drop, "loss(1st occurrence) − loss(2nd occurrence), nats"),
}
