"""Just read twice (Arora et al. 2024, JRT-Prompt): the context repeated before the questions.

``read_twice(batch, context_len)`` turns ``context · questions`` into ``context · context ·
questions``: a recurrent model then reads every fact once more after having seen all of them.
Targets and the loss mask move with their tokens; the inserted copy is not scored. For MQAR the
context is the ``2·n_pairs`` key-value tokens (:func:`mqar_context_len`).
"""

from __future__ import annotations

import torch

from .base import TaskBatch


def mqar_context_len(batch: TaskBatch) -> int:
    """Tokens of an MQAR batch's key-value context (``2 · n_pairs``)."""
    if batch.task != "mqar" or "keys" not in batch.meta:
        raise ValueError(f"batch: expected an MQAR batch, got task {batch.task!r}")
    return 2 * int(batch.meta["keys"].shape[1])


def read_twice(batch: TaskBatch, context_len: int) -> TaskBatch:
    """``batch`` with its first ``context_len`` tokens read twice (module docstring). ``meta``
    positions (``*_pos``) shift by ``context_len``; ``meta["read_twice"]`` records the length."""
    if not isinstance(context_len, int) or isinstance(context_len, bool) or not 0 < context_len <= batch.seq_len:
        raise ValueError(f"context_len: expected an integer in [1, {batch.seq_len}], got {context_len!r}")
    ctx = batch.tokens[:, :context_len]
    tokens = torch.cat([ctx, batch.tokens], dim=1)
    # the copy's last token now predicts the context's first: that target is not scored
    prefix_targets = torch.cat([ctx[:, 1:], ctx[:, :1]], dim=1)
    targets = torch.cat([prefix_targets, batch.targets], dim=1)
    mask = torch.cat([torch.zeros_like(ctx, dtype=torch.bool), batch.loss_mask], dim=1)
    meta = {k: (v + context_len if k.endswith("_pos") and isinstance(v, torch.Tensor) else v)
            for k, v in batch.meta.items()}
    meta["read_twice"] = context_len
    return TaskBatch(tokens, targets, mask, meta, batch.vocab, batch.task)
