"""Deterministic synthetic tasks for training and probing small "model organisms".

Every generator returns a :class:`TaskBatch` and takes a ``seed`` (an ``int``, or a
``torch.Generator`` that is used and advanced): identical arguments give identical batches.

Conventions shared by all tasks
-------------------------------
- ``tokens``: ``LongTensor[B, L]``.
- ``targets``: ``LongTensor[B, L]``, next-token targets aligned with ``tokens``: ``targets[:, t]``
  is what the model should predict after reading ``tokens[:, :t+1]``, i.e. ``tokens`` shifted left
  by one. Where no next token exists (the last position, padding) ``targets`` hold ``vocab.pad``
  and ``loss_mask`` is False, so every target is a valid index.
- ``loss_mask``: ``BoolTensor[B, L]``, the positions where the loss / metric counts.
- ``meta``: task-specific metadata (tensors, lists, scalars); documented per task.
- ``vocab``: a :class:`TaskVocab` (``vocab_size`` and named special ids).

Token ids
---------
- ``induction``: ``bos = 0``; random tokens ``1 .. vocab_size-1``.
- ``mqar``: ``pad = 0`` (the filler when ``random_fill=False``); keys ``1 .. V//2-1``; values
  ``V//2 .. V-1``.
- ``copying``: symbols ``0 .. A-1``; ``$ = A`` (bos), ``| = A+1`` (sep), ``. = A+2`` (eos),
  ``* = A+3`` (pad); ``vocab_size = A + 4`` (A = ``alphabet``, 10 by default).
- ``icll``: symbols ``0 .. V-3``; ``sep = V-2``; ``pad = V-1`` (V = ``vocab``, 20 by default).
- ``passkey``, ``successor``, ``noun_lists``: bytes (``BYTE_VOCAB``: vocab 256, token = byte
  value, ``pad = 0``), or the ids of a Hugging Face-style ``tokenizer`` when one is given.

``TASKS`` maps task names to generators; ``make_task(name, **kwargs)`` checks the name and the
argument names before calling one.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

SeedLike = int | torch.Generator

__all__ = [
    "BYTE_VOCAB",
    "DFA",
    "NOUNS",
    "SUCCESSOR_FAMILIES",
    "TASKS",
    "TaskBatch",
    "TaskVocab",
    "copying",
    "copying_eval",
    "dfa_accepts",
    "icll",
    "icll_legal_next",
    "induction",
    "legal_next_accuracy",
    "make_generator",
    "make_task",
    "mqar",
    "noun_lists",
    "passkey",
    "random_dfa",
    "string_accuracy",
    "successor",
    "successor_of",
]


# ----------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class TaskVocab:
    """The token ids of a task: total ``vocab_size`` and named special ids.

    ``byte_level`` marks vocabularies where token id = byte value (vocab 256). ``pad`` is the id
    used to pad ``tokens`` and to fill undefined ``targets`` (``specials["pad"]`` when present,
    else ``specials["bos"]``, else 0).
    """

    vocab_size: int
    specials: Mapping[str, int] = field(default_factory=dict)
    byte_level: bool = False

    def __post_init__(self) -> None:
        _check_int("vocab_size", self.vocab_size, low=1)
        for name, idx in self.specials.items():
            if not 0 <= idx < self.vocab_size:
                raise ValueError(f"specials: {name!r}={idx} is outside vocab_size="
                                 f"{self.vocab_size}")
        object.__setattr__(self, "specials", MappingProxyType(dict(self.specials)))

    def __getitem__(self, name: str) -> int:
        """Id of the special token ``name``; KeyError names the known specials."""
        if name not in self.specials:
            raise KeyError(f"no special token {name!r}; this vocab has {sorted(self.specials)}")
        return self.specials[name]

    @property
    def pad(self) -> int:
        """Id used for padding and for targets that do not exist."""
        return self.specials.get("pad", self.specials.get("bos", 0))


@dataclass(eq=False)
class TaskBatch:
    """One batch of a synthetic task; see the module docstring for the conventions.

    Methods taking ``logits`` accept either logits ``[B, L, V]`` (argmax is taken) or predicted
    ids ``[B, L]``.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    meta: dict[str, Any]
    vocab: TaskVocab
    task: str = ""

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2:
            raise ValueError(f"tokens: expected shape [B, L], got {tuple(self.tokens.shape)}")
        for name in ("targets", "loss_mask"):
            shape = tuple(getattr(self, name).shape)
            if shape != tuple(self.tokens.shape):
                raise ValueError(f"{name}: expected shape {tuple(self.tokens.shape)}, got {shape}")
        if self.loss_mask.dtype != torch.bool:
            raise ValueError(f"loss_mask: expected a bool tensor, got {self.loss_mask.dtype}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted ids ``[B, L]`` from logits ``[B, L, V]`` (argmax) or ids ``[B, L]``."""
        preds = logits.argmax(dim=-1) if logits.dim() == 3 else logits
        if tuple(preds.shape) != tuple(self.tokens.shape):
            raise ValueError(
                f"logits: expected [B, L, V] or [B, L] with B, L = {tuple(self.tokens.shape)}, "
                f"got {tuple(logits.shape)}")
        return preds.long()

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        """BoolTensor ``[B, L]``: prediction equals target (everywhere, mask not applied)."""
        preds = self.predictions(logits)
        return preds == self.targets.to(preds.device)

    def accuracy(self, logits: torch.Tensor) -> float:
        """Token accuracy over ``loss_mask`` positions (NaN when the mask is empty)."""
        correct = self.correct(logits)
        mask = self.loss_mask.to(correct.device)
        if not mask.any():
            return float("nan")
        return correct[mask].float().mean().item()

    def exact_match(self, logits: torch.Tensor) -> torch.Tensor:
        """BoolTensor ``[B]``: every masked position of the sequence is predicted correctly."""
        correct = self.correct(logits)
        return (correct | ~self.loss_mask.to(correct.device)).all(dim=1)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``logits [B, L, V]`` over the ``loss_mask`` positions."""
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(self.tokens.shape):
            raise ValueError(f"logits: expected [B, L, V] with B, L = {tuple(self.tokens.shape)}, "
                             f"got {tuple(logits.shape)}")
        mask = self.loss_mask.to(logits.device)
        return F.cross_entropy(logits[mask].float(), self.targets.to(logits.device)[mask])

    def to(self, device: torch.device | str) -> TaskBatch:
        """A copy with every tensor (``meta`` tensors included) on ``device``."""
        meta = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.meta.items()}
        return TaskBatch(self.tokens.to(device), self.targets.to(device),
                         self.loss_mask.to(device), meta, self.vocab, self.task)

    def text(self, index: int) -> str:
        """Sequence ``index`` decoded as UTF-8, trailing padding removed (byte-level tasks only)."""
        if not self.vocab.byte_level:
            raise ValueError(f"text(): task {self.task!r} is not byte-level")
        data = bytes(self.tokens[index].tolist()).rstrip(bytes([self.vocab.pad]))
        return data.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- helpers


def make_generator(seed: SeedLike) -> torch.Generator:
    """A CPU generator: ``seed`` itself when it is one (used and advanced), else a fresh one
    seeded with the int ``seed``; anything else is a TypeError naming ``seed``."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(int(seed))
    raise TypeError(f"seed: expected an int or a torch.Generator, got {type(seed).__name__}")


def _check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or a ValueError / TypeError naming the argument."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an integer <= {high}, got {value}")
    return int(value)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """A uniform integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (1,), generator=g).item())


def _distinct(g: torch.Generator, rows: int, n: int, k: int) -> torch.Tensor:
    """``LongTensor[rows, k]``: per row, ``k`` distinct values from ``range(n)`` in random order."""
    return torch.rand(rows, n, generator=g).argsort(dim=1)[:, :k]


def _shift_targets(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """Next-token targets: ``tokens`` shifted left by one, ``pad`` at the last position."""
    targets = torch.full_like(tokens, pad)
    targets[:, :-1] = tokens[:, 1:]
    return targets


def _pack(rows: Sequence[Sequence[int]], pad: int, seq_len: int | None) -> torch.Tensor:
    """Right-pad token lists to ``seq_len`` (default: the longest); longer rows are an error."""
    longest = max(len(r) for r in rows)
    width = longest if seq_len is None else seq_len
    if longest > width:
        raise ValueError(f"seq_len: {seq_len} is too short, the longest sequence needs {longest}")
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens


def _span_mask(shape: tuple[int, int], spans: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
    """Mask of the positions predicting a token inside the spans (``[s-1, e-1)`` for ``[s, e)``)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for b, row_spans in enumerate(spans):
        for start, end in row_spans:
            mask[b, max(start - 1, 0): end - 1] = True
    return mask


def _length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Mask of the positions whose next token is real (``t < length - 1``)."""
    return torch.arange(width)[None, :] < (lengths[:, None] - 1)


BYTE_VOCAB = TaskVocab(256, {"pad": 0}, byte_level=True)
"""Vocabulary of the byte-level tasks: token id = byte value, NUL (0) pads."""


class _Encoder:
    """Text to token ids: UTF-8 bytes by default, or a Hugging Face-style ``tokenizer.encode``."""

    def __init__(self, tokenizer: Any = None) -> None:
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("tokenizer: expected an object with an encode(text) method "
                            f"(Hugging Face style), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.byte_level = tokenizer is None

    def __call__(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # a plain encode(text) without Hugging Face's keyword
            ids = self.tokenizer.encode(text)
        return [int(i) for i in ids]

    def vocab(self) -> TaskVocab:
        """BYTE_VOCAB, or the tokenizer's size with its pad (else eos, else 0) as ``pad``."""
        if self.tokenizer is None:
            return BYTE_VOCAB
        tok = self.tokenizer
        size = len(tok) if hasattr(tok, "__len__") else getattr(tok, "vocab_size", None)
        if size is None:
            raise TypeError("tokenizer: needs __len__ or a vocab_size attribute")
        pad = getattr(tok, "pad_token_id", None)
        pad = getattr(tok, "eos_token_id", None) if pad is None else pad
        return TaskVocab(int(size), {"pad": int(pad or 0)}, byte_level=False)


class _SpanBuilder:
    """Concatenates text pieces into token ids, recording the token span of chosen words.

    A word is preceded by a space. At byte level the space stays with the text before it, so the
    word's span holds exactly its bytes; with a BPE tokenizer the space is encoded with the word
    (" Thursday" is one GPT-2 token, "Thursday" after a separately encoded space is not).
    """

    def __init__(self, encoder: _Encoder) -> None:
        self.encoder = encoder
        self.tokens: list[int] = []
        self._pending = ""

    def text(self, piece: str) -> None:
        self._pending += piece

    def extend(self, tokens: Sequence[int]) -> None:
        self._flush()
        self.tokens.extend(tokens)

    def word(self, word: str, space: bool = True) -> tuple[int, int]:
        """Append ``word`` (after a space when ``space``); returns its span ``[start, end)``."""
        lead = " " if space else ""
        if self.encoder.byte_level:
            self._pending, lead = self._pending + lead, ""
        self._flush()
        start = len(self.tokens)
        self.tokens.extend(self.encoder(lead + word))
        return start, len(self.tokens)

    def finish(self) -> list[int]:
        self._flush()
        return self.tokens

    def _flush(self) -> None:
        if self._pending:
            self.tokens.extend(self.encoder(self._pending))
            self._pending = ""


# ----------------------------------------------------------------------------- induction


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


# ----------------------------------------------------------------------------- MQAR


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


# ----------------------------------------------------------------------------- copying

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


# ----------------------------------------------------------------------------- passkey

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                 "memorize it. I will quiz you about the important information there.")
PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again.")
PASSKEY_NEEDLE = (" The pass key is", ". Remember it.")
PASSKEY_QUESTION = " What is the pass key? The pass key is"
# style="compact": the same filler, no intro, and short needle / question sharing one cue, so a
# prompt fits in ~30 tokens and short training lengths leave most of the sequence as haystack
PASSKEY_STYLES = {
    "standard": (PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION),
    "compact": ("", (" key", "."), " key"),
}


def passkey(batch: int, seq_len: int, depth: float | None = 0.5, key_len: int = 5, seed: SeedLike = 0,
            tokenizer: Any = None, style: str = "standard") -> TaskBatch:
    """Passkey retrieval (Mohtashami & Jaggi 2023; the capacity test of Stuffed Mamba).

    ``intro · filler · " The pass key is K. Remember it." · filler · " What is the pass key? The
    pass key is K"``, exactly ``seq_len`` tokens. The key K has ``key_len`` random digits (first
    non-zero). The filler cycles five fixed sentences; the needle goes at the sentence boundary
    nearest to ``depth`` × (filler length). Byte-level (token = byte) by default; with a Hugging
    Face-style ``tokenizer`` the same text is built from its ``encode()`` (text-level).
    ``loss_mask`` covers the positions predicting the answer (the key digits at the end).
    meta: ``key`` (list[str]), ``key_span``/``answer_span``/``needle_span`` ``LongTensor[B, 2]``
    (half-open token spans), ``depth`` (requested), ``actual_depth [B]`` (filler fraction before
    the needle). ``depth=None`` draws each row's depth uniformly from [0, 1] (for training).
    ``style="compact"`` drops the intro and uses ``" key K."`` as needle and ``" key K"`` as
    question (prompt overhead ~15 tokens instead of ~220), for small models trained on short
    sequences; ``"standard"`` is the prompt of the papers.
    """
    batch = _check_int("batch", batch, low=1)
    seq_len = _check_int("seq_len", seq_len, low=1)
    key_len = _check_int("key_len", key_len, low=1)
    if depth is not None and (not isinstance(depth, numbers.Real) or not 0.0 <= depth <= 1.0):
        raise ValueError(f"depth: expected a float in [0, 1] or None (random per row), got {depth!r}")
    if style not in PASSKEY_STYLES:
        raise ValueError(f"style: expected one of {sorted(PASSKEY_STYLES)}, got {style!r}")
    encoder, g = _Encoder(tokenizer), make_generator(seed)
    digits = torch.randint(0, 10, (batch, key_len), generator=g)
    digits[:, 0] = torch.randint(1, 10, (batch,), generator=g)
    keys = ["".join(map(str, row)) for row in digits.tolist()]
    depths = torch.rand(batch, generator=g).tolist() if depth is None else [float(depth)] * batch
    rows = [_passkey_row(encoder, key, seq_len, d, style) for key, d in zip(keys, depths)]
    vocab = encoder.vocab()
    tokens = _pack([r[0] for r in rows], vocab.pad, seq_len)
    spans = {name: torch.tensor([r[1][name] for r in rows]) for name in ("key", "answer", "needle")}
    mask = _span_mask(tuple(tokens.shape), [[tuple(s)] for s in spans["answer"].tolist()])
    meta = {"key": keys, "key_span": spans["key"], "answer_span": spans["answer"],
            "needle_span": spans["needle"], "depth": depth if depth is None else float(depth),
            "actual_depth": torch.tensor([r[2] for r in rows])}
    return TaskBatch(tokens, _shift_targets(tokens, vocab.pad), mask, meta, vocab, "passkey")


def _passkey_row(encoder: _Encoder, key: str, seq_len: int, depth: float,
                 style: str) -> tuple[list[int], dict[str, tuple[int, int]], float]:
    """Tokens of one passkey prompt, its spans (key, answer, needle) and the actual depth."""
    intro_text, needle_text, question_text = PASSKEY_STYLES[style]
    intro = encoder(intro_text) if intro_text else []
    needle, key_span = _with_word(encoder, needle_text[0], key, needle_text[1])
    question, answer_span = _with_word(encoder, question_text, key, "")
    n_fill = seq_len - len(intro) - len(needle) - len(question)
    if n_fill < 0:
        raise ValueError(f"seq_len: {seq_len} is too short for the {style} passkey prompt; "
                         f"need at least {seq_len - n_fill}")
    hay, bounds = _filler_stream(encoder, PASSKEY_FILLER, n_fill)
    cut = min(bounds, key=lambda b: abs(b - depth * n_fill))
    tokens = intro + hay[:cut] + needle + hay[cut:] + question
    start = len(intro) + cut
    answer_start = seq_len - len(question)
    spans = {"key": (start + key_span[0], start + key_span[1]),
             "answer": (answer_start + answer_span[0], answer_start + answer_span[1]),
             "needle": (start, start + len(needle))}
    return tokens, spans, cut / n_fill if n_fill else depth


def _with_word(encoder: _Encoder, before: str, word: str,
               after: str) -> tuple[list[int], tuple[int, int]]:
    """Tokens of ``before + " " + word + after`` and the span of ``word`` in them."""
    builder = _SpanBuilder(encoder)
    builder.text(before)
    span = builder.word(word)
    builder.text(after)
    return builder.finish(), span


def _filler_stream(encoder: _Encoder, sentences: Sequence[str],
                   n_tokens: int) -> tuple[list[int], list[int]]:
    """The first ``n_tokens`` tokens of the cycled sentences (each as ``" " + sentence``) and the
    offsets where a sentence starts, ``n_tokens`` included (the candidate insertion points)."""
    pieces = [encoder(" " + s) for s in sentences]
    tokens: list[int] = []
    starts: list[int] = []
    while len(tokens) < n_tokens:
        starts.append(len(tokens))
        tokens.extend(pieces[(len(starts) - 1) % len(pieces)])
    return tokens[:n_tokens], [s for s in starts if s < n_tokens] + [n_tokens]


# ----------------------------------------------------------------------------- successor

SUCCESSOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(1, 201)),
    "number_words": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                     "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                     "seventeen", "eighteen", "nineteen", "twenty"),
    "ordinals": ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                 "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
                 "sixteenth", "seventeenth", "eighteenth", "nineteenth", "twentieth"),
    "weekdays": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "weekdays_short": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "months": ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"),
    "months_short": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                     "Dec"),
    "letters": tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)),
}
"""Ordinal families (Gould et al. 2023): each tuple lists the items in order, no wrap-around."""

SUCCESSOR_TEMPLATES: tuple[tuple[str, str], ...] = (("", ""), ("", ","), ("Count:", ""),
                                                    ("Continue the list:", ","))
"""(prefix, punctuation after each item); items are separated by a space."""


def successor_of(family: str, item: str) -> str | None:
    """The item after ``item`` in ``family`` (None for the last one); errors name the argument."""
    items = _family(family)
    if item not in items:
        raise ValueError(f"item: {item!r} is not in successor family {family!r}")
    index = items.index(item)
    return items[index + 1] if index + 1 < len(items) else None


def _family(name: str) -> tuple[str, ...]:
    if name not in SUCCESSOR_FAMILIES:
        raise ValueError(f"families: unknown successor family {name!r}; "
                         f"expected one of {sorted(SUCCESSOR_FAMILIES)}")
    return SUCCESSOR_FAMILIES[name]


def successor(batch: int, seed: SeedLike = 0, families: Sequence[str] | None = None,
              n_context: int = 3, seq_len: int | None = None, tokenizer: Any = None) -> TaskBatch:
    """Ordinal continuation: ``"Monday Tuesday Wednesday"`` → ``" Thursday"``.

    Per sequence: a family (uniform over ``families``, default all of ``SUCCESSOR_FAMILIES``), a
    template (``SUCCESSOR_TEMPLATES``) and ``n_context`` consecutive items, followed by their
    successor (no wrap-around). Byte-level by default, or a Hugging Face-style ``tokenizer``.
    Rows are right-padded to ``seq_len`` (default: the longest). ``loss_mask`` covers the positions
    predicting the successor's tokens (at byte level: its bytes, not the space before it).
    meta: ``family`` (list[str]), ``index [B]`` (successor's index in its family), ``answer``
    (list[str]), ``answer_span [B, 2]``, ``template [B]``.
    """
    batch = _check_int("batch", batch, low=1)
    n_context = _check_int("n_context", n_context, low=1)
    if families is None or isinstance(families, str):
        names = list(SUCCESSOR_FAMILIES) if families is None else [families]
    else:
        names = list(families)
    if not names or any(len(_family(name)) <= n_context for name in names):
        raise ValueError(f"families / n_context: every family needs more than n_context="
                         f"{n_context} items; got {names}")
    encoder, g = _Encoder(tokenizer), make_generator(seed)
    rows, info = [], []
    for _ in range(batch):
        name = names[_randint(g, 0, len(names) - 1)]
        index = _randint(g, n_context, len(SUCCESSOR_FAMILIES[name]) - 1)
        template = _randint(g, 0, len(SUCCESSOR_TEMPLATES) - 1)
        tokens, span = _successor_row(encoder, name, index, n_context, template)
        rows.append(tokens)
        info.append((name, index, span, template))
    return _successor_batch(rows, info, encoder, seq_len)


def _successor_row(encoder: _Encoder, family: str, index: int, n_context: int,
                   template: int) -> tuple[list[int], tuple[int, int]]:
    """Tokens of one successor prompt with its answer, and the answer's span."""
    items = SUCCESSOR_FAMILIES[family][index - n_context: index + 1]
    prefix, punct = SUCCESSOR_TEMPLATES[template]
    builder = _SpanBuilder(encoder)
    builder.text(prefix)
    span = (0, 0)
    for i, item in enumerate(items):
        builder.text(punct if i else "")
        span = builder.word(item, space=bool(prefix) or i > 0)
    return builder.finish(), span


def _successor_batch(rows: list[list[int]], info: list[tuple[str, int, tuple[int, int], int]],
                     encoder: _Encoder, seq_len: int | None) -> TaskBatch:
    """Pack successor rows and assemble their metadata."""
    vocab = encoder.vocab()
    tokens = _pack(rows, vocab.pad, seq_len)
    spans = [span for _, _, span, _ in info]
    meta = {"family": [name for name, *_ in info],
            "index": torch.tensor([index for _, index, _, _ in info]),
            "answer": [SUCCESSOR_FAMILIES[name][index] for name, index, _, _ in info],
            "answer_span": torch.tensor(spans),
            "template": torch.tensor([template for *_, template in info])}
    mask = _span_mask(tuple(tokens.shape), [[span] for span in spans])
    return TaskBatch(tokens, _shift_targets(tokens, vocab.pad), mask, meta, vocab, "successor")


# ----------------------------------------------------------------------------- ICLL (random DFAs)


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


# ----------------------------------------------------------------------------- noun lists

NOUNS: tuple[str, ...] = (
    "anchor", "apple", "arrow", "basket", "blanket", "bottle", "bridge", "bucket", "butter",
    "button", "camera", "candle", "carpet", "castle", "chair", "cherry", "circle", "clock",
    "cloud", "coffee", "collar", "copper", "cotton", "desert", "diamond", "dragon", "drawer",
    "engine", "feather", "finger", "forest", "garden", "ginger", "guitar", "hammer", "harbor",
    "helmet", "island", "jacket", "kettle", "kitchen", "ladder", "lemon", "letter", "library",
    "lizard", "magnet", "marble", "meadow", "mirror", "monkey", "mountain", "needle", "notebook",
    "ocean", "orange", "oven", "paper", "parrot", "pencil", "pepper", "pillow", "planet",
    "pocket", "potato", "rabbit", "ribbon", "river", "rocket", "saddle", "salad", "shadow",
    "shelf", "shoulder", "silver", "spider", "spoon", "stone", "sugar", "table", "teacher",
    "temple", "thunder", "ticket", "tiger", "tomato", "towel", "tower", "train", "trumpet",
    "tunnel", "turtle", "valley", "violin", "wagon", "wallet", "window", "winter", "wizard",
    "zebra",
)
"""Built-in pool of common concrete nouns (single words, lower case, ASCII)."""

MEMORY_INTRO = "Before the meeting, Mary wrote down the following list of words:"
MEMORY_CUE = "When she got back, she read the list again:"
MEMORY_FILLER: tuple[str, ...] = (
    "After the meeting, she took a break and had a cup of coffee.",
    "The office was quiet because most of her colleagues had already gone home.",
    "Outside, a light rain had started to fall on the empty street.",
    "She answered two short emails and put her phone back in her bag.",
    "A delivery van stopped in front of the building and left again a minute later.",
    "Somebody in the next room was laughing at a joke she could not hear.",
    "She watered the plant on the windowsill and straightened a stack of folders.",
    "The clock on the wall was running a few minutes late, as it always did.",
    "For a while she simply looked out of the window and thought about the weekend.",
    "Then she remembered that she still had to call her brother about the trip.",
)
"""Intervening text of the verbatim-memory paradigm (Armeni et al. 2022 use the first sentence
as their short intervening text); longer intervals take whole sentences in order, cycling."""

NOUN_CONDITIONS = ("repeat", "permute", "novel")


def noun_lists(batch: int, list_len: int, condition: str = "repeat", intervening_len: int = 0,
               seed: SeedLike = 0, tokenizer: Any = None) -> TaskBatch:
    """Verbatim short-term memory paradigm (Armeni et al. 2022), byte-level by default.

    ``MEMORY_INTRO`` · list 1 · intervening text · ``MEMORY_CUE`` · list 2, nouns separated by
    ", " and each list closed by ".". List 2 repeats list 1 (``"repeat"``), permutes it
    (``"permute"``, never the identity when ``list_len > 1``) or draws new nouns
    (``"novel"``, disjoint from list 1). List 1 and the intervening text do not depend on the
    condition for a given seed. The intervening text is the shortest run of whole
    ``MEMORY_FILLER`` sentences with at least ``intervening_len`` tokens (none for 0).
    ``loss_mask``: positions predicting noun tokens, first noun of each list excluded.
    meta: ``condition``, ``list1``/``list2`` (list[list[str]]), ``list1_spans``/``list2_spans``
    ``LongTensor[B, list_len, 2]``, ``counted`` ``BoolTensor[list_len]`` (False for the first
    noun, ``exclude_first=True``), ``list1_mask``/``list2_mask [B, L]``, ``intervening_tokens``.
    """
    batch = _check_int("batch", batch, low=1)
    list_len = _check_int("list_len", list_len, low=1, high=len(NOUNS) // 2)
    intervening_len = _check_int("intervening_len", intervening_len, low=0)
    if condition not in NOUN_CONDITIONS:
        raise ValueError(f"condition: expected one of {NOUN_CONDITIONS}, got {condition!r}")
    encoder, g = _Encoder(tokenizer), make_generator(seed)
    filler = _intervening(encoder, intervening_len)
    lists = [_noun_pair(g, list_len, condition) for _ in range(batch)]
    rows = [_noun_row(encoder, first, second, filler) for first, second in lists]
    return _noun_batch(rows, lists, condition, encoder, len(filler))


def _intervening(encoder: _Encoder, n_tokens: int) -> list[int]:
    """Tokens of the shortest run of whole filler sentences with at least ``n_tokens`` tokens."""
    tokens: list[int] = []
    i = 0
    while len(tokens) < n_tokens:
        tokens.extend(encoder(" " + MEMORY_FILLER[i % len(MEMORY_FILLER)]))
        i += 1
    return tokens


def _noun_pair(g: torch.Generator, list_len: int, condition: str) -> tuple[list[str], list[str]]:
    """List 1 and list 2; the draws are the same for every condition (paired designs)."""
    order = torch.randperm(len(NOUNS), generator=g)[: 2 * list_len].tolist()
    first, novel = [NOUNS[i] for i in order[:list_len]], [NOUNS[i] for i in order[list_len:]]
    perm = torch.randperm(list_len, generator=g).tolist()
    if list_len > 1 and perm == sorted(perm):
        perm = perm[1:] + perm[:1]
    second = {"repeat": first, "permute": [first[i] for i in perm], "novel": novel}[condition]
    return first, list(second)


def _noun_row(encoder: _Encoder, first: list[str], second: list[str],
              filler: list[int]) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """Tokens of one memory prompt and the token spans of the nouns of both lists."""
    builder = _SpanBuilder(encoder)
    builder.text(MEMORY_INTRO)
    spans1 = [_list_word(builder, noun, i) for i, noun in enumerate(first)]
    builder.text(".")
    builder.extend(filler)
    builder.text(" " + MEMORY_CUE)
    spans2 = [_list_word(builder, noun, i) for i, noun in enumerate(second)]
    builder.text(".")
    return builder.finish(), spans1, spans2


def _list_word(builder: _SpanBuilder, noun: str, index: int) -> tuple[int, int]:
    builder.text("," if index else "")
    return builder.word(noun)


def _noun_batch(rows: list[tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]],
                lists: list[tuple[list[str], list[str]]], condition: str, encoder: _Encoder,
                n_filler: int) -> TaskBatch:
    """Pack noun-list rows; masks count nouns 2..K of each list."""
    vocab = encoder.vocab()
    tokens = _pack([row for row, _, _ in rows], vocab.pad, None)
    spans1 = torch.tensor([s1 for _, s1, _ in rows])
    spans2 = torch.tensor([s2 for _, _, s2 in rows])
    shape = tuple(tokens.shape)
    mask1 = _span_mask(shape, [s[1:] for s in spans1.tolist()])
    mask2 = _span_mask(shape, [s[1:] for s in spans2.tolist()])
    counted = torch.ones(spans1.shape[1], dtype=torch.bool)
    counted[0] = False
    meta = {"condition": condition, "list1": [a for a, _ in lists], "list2": [b for _, b in lists],
            "list1_spans": spans1, "list2_spans": spans2, "counted": counted,
            "exclude_first": True, "list1_mask": mask1, "list2_mask": mask2,
            "intervening_tokens": n_filler}
    return TaskBatch(tokens, _shift_targets(tokens, vocab.pad), mask1 | mask2, meta, vocab,
                     "noun_lists")


# ----------------------------------------------------------------------------- registry

TASKS: dict[str, Callable[..., TaskBatch]] = {
    "induction": induction,
    "mqar": mqar,
    "copying": copying,
    "passkey": passkey,
    "successor": successor,
    "icll": icll,
    "noun_lists": noun_lists,
}


def make_task(name: str, **kwargs: Any) -> TaskBatch:
    """Generate a batch of task ``name`` with keyword arguments ``kwargs``.

    Unknown names raise ValueError listing the tasks; unknown or missing arguments raise
    TypeError naming them and listing the task's accepted arguments.
    """
    if name not in TASKS:
        raise ValueError(f"name: unknown task {name!r}; expected one of {sorted(TASKS)}")
    fn = TASKS[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty
               and p not in kwargs]
    if unknown or missing:
        problem = (f"unknown argument(s) {unknown}" if unknown
                   else f"missing required argument(s) {missing}")
        raise TypeError(f"task {name!r}: {problem}; accepted arguments: {list(params)}")
    return fn(**kwargs)
