"""String copying (Jelassi et al. 2024) and its exact-match metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import SeedLike, TaskBatch, TaskVocab, _check_int, _shift_targets, make_generator


COPY_TRAIN_LENGTHS = (8, 50)  # Jelassi et al. 2024: train on lengths 8-50 ...
COPY_EVAL_LENGTHS = (40, 80, 120, 160, 200)  # ... and evaluate up to 200


def copying_vocab(alphabet: int = 10) -> TaskVocab:
    """Symbols ``0..A-1`` then ``$`` (bos), ``|`` (sep), ``.`` (eos), ``*`` (pad)."""
    alphabet = _check_int("alphabet", alphabet, low=2)
    specials = {"bos": alphabet, "sep": alphabet + 1, "eos": alphabet + 2, "pad": alphabet + 3}
    return TaskVocab(alphabet + 4, specials)


def copying(batch: int, min_len: int, max_len: int, alphabet: int = 10,
            seed: SeedLike = 0) -> TaskBatch:
    """String copying (Jelassi et al. 2024, "Repeat After Me"): ``$ s | s .`` then ``*`` padding.

    ``s`` is uniform over ``alphabet`` symbols with length uniform in ``[min_len, max_len]``; the
    width is ``2·max_len + 3``. ``loss_mask`` covers the positions predicting the copy and the
    final ``.`` (``t = n+1 .. 2n+1`` for length n). Use :func:`copying_eval` for lengths beyond
    training and :func:`string_accuracy` / ``TaskBatch.accuracy`` (character accuracy) to score.
    meta: ``lengths [B]``, ``copy_start [B]`` (position of the copy's first symbol),
    ``eos_pos [B]``.
    """
    batch = _check_int("batch", batch, low=1)
    min_len = _check_int("min_len", min_len, low=1)
    max_len = _check_int("max_len", max_len, low=min_len)
    vocab = copying_vocab(alphabet)
    g = make_generator(seed)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=g)
    strings = torch.randint(0, alphabet, (batch, max_len), generator=g)
    tokens, n = _copy_layout(strings, lengths, vocab), lengths[:, None]
    pos = torch.arange(tokens.shape[1])[None, :]
    mask = (pos >= n + 1) & (pos <= 2 * n + 1)
    meta = {"lengths": lengths, "copy_start": lengths + 2, "eos_pos": 2 * lengths + 2}
    return TaskBatch(tokens, _shift_targets(tokens, vocab.pad), mask, meta, vocab, "copying")


def _copy_layout(strings: torch.Tensor, lengths: torch.Tensor, vocab: TaskVocab) -> torch.Tensor:
    """Tokens ``$ s | s . * ...`` of width ``2·max_len + 3``; s is a row's prefix of ``strings``."""
    max_len = strings.shape[1]
    pos, n = torch.arange(2 * max_len + 3)[None, :], lengths[:, None]
    first = strings.gather(1, (pos - 1).clamp(0, max_len - 1).expand(len(lengths), -1))
    second = strings.gather(1, (pos - n - 2).clamp(0, max_len - 1))
    tokens = torch.full(first.shape, vocab["pad"], dtype=torch.long)
    tokens = torch.where((pos >= 1) & (pos <= n), first, tokens)
    tokens = torch.where((pos >= n + 2) & (pos <= 2 * n + 1), second, tokens)
    tokens = torch.where(pos == 0, vocab["bos"], tokens)
    tokens = torch.where(pos == n + 1, vocab["sep"], tokens)
    return torch.where(pos == 2 * n + 2, vocab["eos"], tokens)


def copying_eval(lengths: Sequence[int] = COPY_EVAL_LENGTHS, batch: int = 32, alphabet: int = 10,
                 seed: SeedLike = 0) -> dict[int, TaskBatch]:
    """One fixed-length copying batch per length (evaluation beyond the training lengths)."""
    g = make_generator(seed)
    return {int(n): copying(batch, n, n, alphabet, g) for n in lengths}


def string_accuracy(batch: TaskBatch, logits: torch.Tensor) -> float:
    """Fraction of sequences whose masked positions are all right (copying: exact string match).

    ``logits`` are ``[B, L, V]`` logits or ``[B, L]`` predicted ids.
    """
    return batch.exact_match(logits).float().mean().item()
