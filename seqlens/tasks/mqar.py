"""Multi-query associative recall (Arora et al. 2023)."""

from __future__ import annotations

import torch

from .base import SeedLike, TaskBatch, TaskVocab, _check_int, _distinct, _shift_targets, make_generator


def mqar(batch: int, n_pairs: int, vocab_size: int, seq_len: int, n_queries: int | None = None,
         seed: SeedLike = 0, power_a: float = 0.01, random_fill: bool = True) -> TaskBatch:
    """Multi-query associative recall (Zoology, Arora et al. 2023).

    Layout: ``k_1 v_1 .. k_N v_N`` (N = ``n_pairs``, keys distinct from ``1 .. V//2-1``, values
    distinct from ``V//2 .. V-1``), then a query region of ``(L - 2N) // 2`` two-token slots. As in
    Zoology's ``multiquery_ar``, each query goes to a distinct slot drawn with probability
    ``∝ power_a · i^(power_a-1)`` (i = 1-based slot index: a power law favouring short gaps), and
    non-query positions hold uniform random tokens (``random_fill``; else ``pad=0``). One change
    from Zoology: the value is written right after its query key, so ``targets`` stay the
    shifted ``tokens`` everywhere; only query positions are in ``loss_mask``, where the target is
    the queried key's value. ``n_queries`` (default N) distinct keys are queried.
    meta: ``keys``/``values`` ``[B, N]``, ``query_pos``/``query_keys``/``query_values``
    ``[B, n_queries]``, ``key_range``/``value_range`` (half-open).
    """
    batch, n_pairs, vocab_size, seq_len, n_queries = _mqar_check(
        batch, n_pairs, vocab_size, seq_len, n_queries)
    g = make_generator(seed)
    half, context = vocab_size // 2, 2 * n_pairs
    keys = _distinct(g, batch, half - 1, n_pairs) + 1
    values = _distinct(g, batch, vocab_size - half, n_pairs) + half
    asked = _distinct(g, batch, n_pairs, n_queries)
    slots = _power_law_slots(g, batch, (seq_len - context) // 2, n_queries, power_a)
    fill = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    tokens = fill if random_fill else torch.zeros(batch, seq_len, dtype=torch.long)
    tokens[:, 0:context:2], tokens[:, 1:context:2] = keys, values
    query_pos = context + 2 * slots
    query_keys, query_values = keys.gather(1, asked), values.gather(1, asked)
    tokens.scatter_(1, query_pos, query_keys)
    tokens.scatter_(1, query_pos + 1, query_values)
    mask = torch.zeros(batch, seq_len, dtype=torch.bool).scatter_(1, query_pos, True)
    meta = {"keys": keys, "values": values, "query_pos": query_pos, "query_keys": query_keys,
            "query_values": query_values, "key_range": (1, half), "value_range": (half, vocab_size)}
    return TaskBatch(tokens, _shift_targets(tokens, 0), mask, meta,
                     TaskVocab(vocab_size, {"pad": 0}), "mqar")


def _mqar_check(batch: int, n_pairs: int, vocab_size: int, seq_len: int,
                n_queries: int | None) -> tuple[int, int, int, int, int]:
    """Validate MQAR arguments; returns them with ``n_queries`` defaulted to ``n_pairs``."""
    batch = _check_int("batch", batch, low=1)
    n_pairs = _check_int("n_pairs", n_pairs, low=1)
    n_queries = n_pairs if n_queries is None else _check_int("n_queries", n_queries, low=1,
                                                              high=n_pairs)
    vocab_size = _check_int("vocab_size", vocab_size, low=4)
    if vocab_size // 2 - 1 < n_pairs or vocab_size - vocab_size // 2 < n_pairs:
        raise ValueError(f"vocab_size: {vocab_size} leaves {vocab_size // 2 - 1} key ids, fewer "
                         f"than n_pairs={n_pairs}; need vocab_size >= {2 * n_pairs + 2}")
    seq_len = _check_int("seq_len", seq_len, low=1)
    if (seq_len - 2 * n_pairs) // 2 < n_queries:
        raise ValueError(f"seq_len: {seq_len} has no room for {n_queries} queries after "
                         f"{n_pairs} pairs; need seq_len >= {2 * n_pairs + 2 * n_queries}")
    return batch, n_pairs, vocab_size, seq_len, n_queries


def _power_law_slots(g: torch.Generator, batch: int, space: int, k: int,
                     power_a: float) -> torch.Tensor:
    """``[batch, k]`` distinct slots in ``range(space)``, P(i) ∝ ``power_a (i+1)^(power_a-1)``."""
    if not power_a > 0:
        raise ValueError(f"power_a: expected a positive float, got {power_a!r}")
    weights = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return torch.multinomial(weights.expand(batch, space).contiguous(), k, replacement=False,
                             generator=g)
