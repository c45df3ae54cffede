"""In-context language learning over random DFAs (Akyürek et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .base import SeedLike, TaskBatch, TaskVocab, _check_int, _length_mask, _pack, _randint, _shift_targets, make_generator


@dataclass(frozen=True, eq=False)
class DFA:
    """A deterministic automaton over symbols ``0 .. n_symbols-1``.

    ``table[s, a]`` is the state reached from ``s`` on ``a``, or -1 (no edge). As in the official
    REGBENCH code (Akyürek et al. 2024, ``berlino/seq_icl``), the start state is 0 and every state
    accepts: a string is in the language iff its walk from state 0 never takes a missing edge.
    """

    table: torch.Tensor

    def __post_init__(self) -> None:
        if self.table.dim() != 2 or self.table.dtype != torch.long:
            raise ValueError("table: expected a LongTensor [n_states, n_symbols]")

    @property
    def n_states(self) -> int:
        return self.table.shape[0]

    @property
    def n_symbols(self) -> int:
        return self.table.shape[1]

    @cached_property
    def edges(self) -> list[list[tuple[int, int]]]:
        """Per state, the out-edges ``(symbol, next_state)`` in symbol order."""
        return [[(a, nxt) for a, nxt in enumerate(row) if nxt >= 0] for row in self.table.tolist()]

    def out_degree(self) -> torch.Tensor:
        """``LongTensor[n_states]``: number of out-edges per state."""
        return (self.table >= 0).sum(dim=1)

    def alphabet(self) -> list[int]:
        """Symbols used on at least one edge."""
        return torch.nonzero((self.table >= 0).any(dim=0)).flatten().tolist()

    def walk(self, string: Sequence[int]) -> int:
        """State reached from 0 by reading ``string``; -1 if an edge is missing."""
        state = 0
        for symbol in string:
            if not 0 <= symbol < self.n_symbols:
                return -1
            state = int(self.table[state, symbol])
            if state < 0:
                return -1
        return state

    def sample(self, length: int, seed: SeedLike) -> list[int]:
        """A random walk of ``length`` symbols from state 0 (uniform over out-edges)."""
        g, state, out = make_generator(seed), 0, []
        for u in torch.rand(length, generator=g).tolist():
            edges = self.edges[state]
            symbol, state = edges[int(u * len(edges))]
            out.append(symbol)
        return out


def dfa_accepts(dfa: DFA | torch.Tensor, string: Sequence[int] | torch.Tensor) -> bool:
    """True iff ``string`` is in the language of ``dfa`` (a DFA or its transition table)."""
    machine = dfa if isinstance(dfa, DFA) else DFA(torch.as_tensor(dfa, dtype=torch.long))
    symbols = string.tolist() if isinstance(string, torch.Tensor) else list(string)
    return machine.walk(symbols) >= 0


def random_dfa(seed: SeedLike, n_symbols: int = 18, max_states: int = 12, max_edges: int = 4,
               min_states: int = 2) -> DFA:
    """A random DFA following REGBENCH's sampler (``berlino/seq_icl``, ``dfa.py``).

    ``n_states`` uniform in ``[min_states, max_states]``; the alphabet is ``min(n_states,
    n_symbols)`` distinct symbols; each state gets a uniform number in ``[1, min(max_edges,
    |alphabet|)]`` of out-edges on distinct alphabet symbols to uniformly random states.
    """
    _check_dfa_args(n_symbols, max_states, max_edges, min_states)
    g = make_generator(seed)
    n_states = _randint(g, min_states, max_states)
    alphabet = torch.randperm(n_symbols, generator=g)[: min(n_states, n_symbols)]
    table = torch.full((n_states, n_symbols), -1, dtype=torch.long)
    max_out = min(max_edges, len(alphabet))
    for state in range(n_states):
        degree = _randint(g, 1, max_out)
        symbols = alphabet[torch.randperm(len(alphabet), generator=g)[:degree]]
        table[state, symbols] = torch.randint(0, n_states, (degree,), generator=g)
    return DFA(table)


def _check_dfa_args(n_symbols: int, max_states: int, max_edges: int, min_states: int) -> None:
    """Validate the DFA sampler's arguments, naming the offending one."""
    _check_int("n_symbols", n_symbols, low=1)
    _check_int("max_states", max_states, low=1)
    _check_int("max_edges", max_edges, low=1)
    if _check_int("min_states", min_states, low=1) > max_states:
        raise ValueError(f"min_states: {min_states} exceeds max_states={max_states}")


def icll(batch: int, seq_len: int | None = None, seed: SeedLike = 0, vocab: int = 20,
         max_states: int = 12, max_edges: int = 4, min_states: int = 2,
         n_examples: tuple[int, int] = (10, 20), max_len: int = 50) -> TaskBatch:
    """In-context language learning (Akyürek et al. 2024, REGBENCH).

    Per sequence: a :func:`random_dfa` over ``vocab - 2`` symbols, then a number of strings
    uniform in ``n_examples`` (inclusive), each a random walk of length uniform in
    ``[1, max_len]``, joined by ``sep = vocab-2``. Rows are right-padded with ``pad = vocab-1``
    to ``seq_len`` (default: the longest); a longer row is cut at ``seq_len`` (as REGBENCH does;
    the cut string is still a walk of the DFA, ``meta["truncated"]`` flags it). Targets are the
    next token everywhere; ``loss_mask`` is every position whose next token is real.
    meta: ``dfas`` (list[DFA]), ``transitions`` ``LongTensor[B, max_states, vocab-2]`` (-1 = no
    edge / no state), ``n_states [B]``, ``strings`` (per row, the strings present),
    ``lengths [B]``, ``truncated [B]``. See :func:`icll_legal_next` for the legal-next metric.
    """
    batch, max_len = _check_int("batch", batch, low=1), _check_int("max_len", max_len, low=1)
    vocab = _check_int("vocab", vocab, low=4)
    _check_dfa_args(vocab - 2, max_states, max_edges, min_states)
    lo, hi = _check_pair("n_examples", n_examples)
    if seq_len is not None:
        _check_int("seq_len", seq_len, low=2)
    g, sep = make_generator(seed), vocab - 2
    dfas = [random_dfa(g, vocab - 2, max_states, max_edges, min_states) for _ in range(batch)]
    rows = [_icll_row(dfa, g, sep, _randint(g, lo, hi), max_len) for dfa in dfas]
    truncated = [seq_len is not None and len(row) > seq_len for row in rows]
    rows = [row[:seq_len] if seq_len is not None else row for row in rows]
    return _icll_batch(rows, dfas, truncated, vocab, max_states, seq_len)


def _check_pair(name: str, pair: Any) -> tuple[int, int]:
    """A ``(low, high)`` pair of integers with ``1 <= low <= high``."""
    if not isinstance(pair, Sequence) or len(pair) != 2:
        raise TypeError(f"{name}: expected a (low, high) pair of integers, got {pair!r}")
    low = _check_int(name, pair[0], low=1)
    return low, _check_int(name, pair[1], low=low)


def _icll_row(dfa: DFA, g: torch.Generator, sep: int, n_strings: int, max_len: int) -> list[int]:
    """``n_strings`` walks of ``dfa`` joined by ``sep``."""
    row: list[int] = []
    for i in range(n_strings):
        row.extend([sep] if i else [])
        row.extend(dfa.sample(_randint(g, 1, max_len), g))
    return row


def _icll_batch(rows: list[list[int]], dfas: list[DFA], truncated: list[bool], vocab: int,
                max_states: int, seq_len: int | None) -> TaskBatch:
    """Pack ICLL rows and assemble targets, mask and metadata."""
    sep, pad = vocab - 2, vocab - 1
    tokens = _pack(rows, pad, seq_len)
    lengths = torch.tensor([len(row) for row in rows])
    transitions = torch.full((len(rows), max_states, vocab - 2), -1, dtype=torch.long)
    for b, dfa in enumerate(dfas):
        transitions[b, : dfa.n_states] = dfa.table
    meta = {"dfas": dfas, "transitions": transitions,
            "n_states": torch.tensor([dfa.n_states for dfa in dfas]),
            "strings": [_split(row, sep) for row in rows], "lengths": lengths,
            "truncated": torch.tensor(truncated)}
    return TaskBatch(tokens, _shift_targets(tokens, pad), _length_mask(lengths, tokens.shape[1]),
                     meta, TaskVocab(vocab, {"sep": sep, "pad": pad}), "icll")


def _split(row: Sequence[int], sep: int) -> list[list[int]]:
    """Split a token row at ``sep``; a trailing empty piece (row cut right after sep) is dropped."""
    pieces: list[list[int]] = [[]]
    for token in row:
        if token == sep:
            pieces.append([])
        else:
            pieces[-1].append(token)
    return pieces[:-1] if len(pieces) > 1 and not pieces[-1] else pieces


def icll_legal_next(batch: TaskBatch) -> torch.Tensor:
    """``BoolTensor[B, L, V]``: ``[b, t, v]`` is True iff token v may follow ``tokens[b, :t+1]``.

    After a symbol, the legal tokens are the out-edges of the DFA state reached in the current
    string plus ``sep`` (every state accepts); after ``sep`` a new string starts at state 0
    (strings are non-empty, so ``sep`` is not legal). Only ``pad`` follows the end of the row.
    The ``max_len`` bound on string length is ignored.
    """
    if batch.task != "icll":
        raise ValueError(f"batch: expected an icll batch, got task {batch.task!r}")
    sep, pad = batch.vocab["sep"], batch.vocab["pad"]
    states = torch.zeros(batch.tokens.shape, dtype=torch.long)
    for b, dfa in enumerate(batch.meta["dfas"]):
        n = int(batch.meta["lengths"][b])
        states[b, :n] = torch.tensor(_icll_states(dfa, batch.tokens[b, :n].tolist(), sep))
    rows = torch.arange(batch.batch_size)[:, None]
    legal = torch.zeros(*batch.tokens.shape, batch.vocab.vocab_size, dtype=torch.bool)
    legal[..., :sep] = batch.meta["transitions"].cpu()[rows, states] >= 0
    legal[..., sep] = batch.tokens.cpu() != sep
    at_end = _length_mask(batch.meta["lengths"].cpu(), batch.seq_len).logical_not()
    legal[at_end] = False
    legal[..., pad] = at_end
    return legal


def _icll_states(dfa: DFA, row: Sequence[int], sep: int) -> list[int]:
    """The DFA state after each token of ``row`` (reset to 0 by ``sep``)."""
    table, states, state = dfa.table.tolist(), [], 0
    for token in row:
        state = 0 if token == sep else table[state][token]
        if state < 0:
            raise ValueError("batch: a token sequence leaves its DFA; was the batch modified?")
        states.append(state)
    return states


def legal_next_accuracy(batch: TaskBatch, logits: torch.Tensor) -> float:
    """Fraction of ``loss_mask`` positions whose prediction is a DFA-legal next token."""
    preds = batch.predictions(logits).cpu()
    ok = icll_legal_next(batch).gather(2, preds[..., None]).squeeze(-1)
    mask = batch.loss_mask.cpu()
    return ok[mask].float().mean().item() if mask.any() else float("nan")
