"""read_twice: the context appears twice, every scored target stays aligned with its token."""

from __future__ import annotations

import pytest
import torch

from seqlens.tasks import mqar
from seqlens.tasks.read_twice import mqar_context_len, read_twice


def test_mqar_read_twice_repeats_the_pairs_and_keeps_the_queries_scored():
    b = mqar(4, n_pairs=4, vocab_size=32, seq_len=24, seed=0)
    n = mqar_context_len(b)
    assert n == 8
    r = read_twice(b, n)
    assert torch.equal(r.tokens[:, :n], r.tokens[:, n:2 * n]) and torch.equal(r.tokens[:, n:], b.tokens)
    assert torch.equal(r.loss_mask[:, n:], b.loss_mask) and not r.loss_mask[:, :n].any()
    # scored targets are the next token of the new sequence, and the queried values
    assert torch.equal(r.targets[:, :-1][r.loss_mask[:, :-1]], r.tokens[:, 1:][r.loss_mask[:, :-1]])
    assert torch.equal(r.tokens.gather(1, r.meta["query_pos"] + 1), b.meta["query_values"])
    # a perfect oracle on the original is a perfect oracle on the read-twice batch
    assert r.accuracy(r.targets) == 1.0 and b.accuracy(b.targets) == 1.0


def test_bad_context_len_and_task_are_named():
    b = mqar(2, n_pairs=2, vocab_size=16, seq_len=12, seed=0)
    for bad in (0, 13, 2.0):
        with pytest.raises(ValueError, match="^context_len"):
            read_twice(b, bad)
    from seqlens.tasks import induction
    with pytest.raises(ValueError, match="^batch"):
        mqar_context_len(induction(2, 16, 8))
