"""Induction task (Olsson et al. 2022): repeated random tokens."""

from __future__ import annotations

import torch

from .base import SeedLike, TaskBatch, TaskVocab, _check_int, _shift_targets, make_generator


def induction(batch: int, seq_len: int, vocab_size: int, seed: SeedLike = 0,
              min_prefix: int | None = None) -> TaskBatch:
    """Repeated random tokens (Olsson et al. 2022): ``[BOS] r_1..r_n r_1..r_m``.

    ``seq_len`` is the total length L (BOS included); ``n = L // 2`` and ``m = (L - 1) // 2``, so
    the second copy is the whole prefix when L is odd and misses its last token when L is even.
    Tokens are uniform in ``1 .. vocab_size-1`` (repeats within the prefix are possible), BOS = 0.
    ``loss_mask`` covers the positions reading the second copy (``n+1 .. L-2``), whose next token
    is predictable by induction. meta: ``prefix_len`` n, ``repeat_len`` m, ``first_pos`` /
    ``second_pos`` (``LongTensor[m]``: positions of ``r_j`` in the first / second copy), and
    ``first_mask`` / ``second_mask`` (``[B, L]``: the positions predicting ``r_2..r_m`` in the first
    / second copy, the two halves of the in-context loss drop).

    ``min_prefix``: each row draws its own prefix length ``n_b`` uniform in ``[min_prefix, L // 2]``
    and repeats it periodically to the end (``x_i = r_{(i−1) mod n_b + 1}``). A fixed period lets a
    rotary model solve the task with a relative-position head (attend to ``i − (n − 1)``) instead of
    induction; a varying one forces content matching. ``prefix_len`` / ``repeat_len`` are then
    ``LongTensor[B]`` and ``first_pos`` / ``second_pos`` are omitted.
    """
    batch = _check_int("batch", batch, low=1)
    seq_len = _check_int("seq_len", seq_len, low=5)
    vocab_size = _check_int("vocab_size", vocab_size, low=2)
    g = make_generator(seed)
    if min_prefix is not None:
        return _periodic_induction(batch, seq_len, vocab_size, g,
                                   _check_int("min_prefix", min_prefix, low=2, high=seq_len // 2))
    n, m = seq_len // 2, (seq_len - 1) // 2
    prefix = torch.randint(1, vocab_size, (batch, n), generator=g)
    bos = torch.zeros(batch, 1, dtype=torch.long)
    tokens = torch.cat([bos, prefix, prefix[:, :m]], dim=1)
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    mask[:, n + 1: seq_len - 1] = True
    n_rows, m_rows = torch.full((batch,), n), torch.full((batch,), m)
    meta = {"prefix_len": n, "repeat_len": m, "first_pos": torch.arange(1, m + 1),
            "second_pos": torch.arange(n + 1, n + m + 1), **_occurrence_masks(n_rows, m_rows, seq_len)}
    return TaskBatch(tokens, _shift_targets(tokens, 0), mask, meta,
                     TaskVocab(vocab_size, {"bos": 0}), "induction")


def _occurrence_masks(n: torch.Tensor, m: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """``first_mask`` / ``second_mask`` ``[B, L]``: positions ``1 .. m−1`` and ``n+1 .. n+m−1`` of
    each row (those predicting ``r_2..r_m`` in the first and the second copy)."""
    pos = torch.arange(seq_len)[None]
    first = (pos >= 1) & (pos <= (m - 1)[:, None])
    second = (pos >= (n + 1)[:, None]) & (pos <= (n + m - 1)[:, None])
    return {"first_mask": first, "second_mask": second}


def _periodic_induction(batch: int, seq_len: int, vocab_size: int, g: torch.Generator,
                        min_prefix: int) -> TaskBatch:
    """``induction(..., min_prefix=...)``: per-row prefix lengths, repeated periodically."""
    n = torch.randint(min_prefix, seq_len // 2 + 1, (batch,), generator=g)
    block = torch.randint(1, vocab_size, (batch, seq_len // 2), generator=g)
    idx = torch.arange(seq_len - 1)[None] % n[:, None]  # x_i = r_{(i-1) mod n}, i = 1..L-1
    tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.long), block.gather(1, idx)], dim=1)
    m = torch.minimum(n, seq_len - 1 - n)  # length of the (possibly truncated) second copy
    mask = (torch.arange(seq_len)[None] >= (n + 1)[:, None]) & (torch.arange(seq_len)[None] < seq_len - 1)
    meta = {"prefix_len": n, "repeat_len": m, "min_prefix": min_prefix, **_occurrence_masks(n, m, seq_len)}
    return TaskBatch(tokens, _shift_targets(tokens, 0), mask, meta,
                     TaskVocab(vocab_size, {"bos": 0}), "induction")
