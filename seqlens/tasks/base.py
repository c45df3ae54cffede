"""Task containers (:class:`TaskVocab`, :class:`TaskBatch`) and the small helpers every task
generator shares (seeding, argument checks, packing, masks)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from seqlens.validate import check_int

SeedLike = int | torch.Generator


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
    """One batch of data: a synthetic task's, a corpus window's or any token ids scored as a
    language model (see :mod:`seqlens.tasks` for the conventions). The trainer and every analysis
    use this one type (``seqlens.models.train.Batch`` is an alias).

    ``meta`` and ``vocab`` are a task's metadata and vocabulary (empty / None for plain token
    batches). Methods taking ``logits`` accept either logits ``[B, L, V]`` (argmax is taken) or
    predicted ids ``[B, L]``.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    vocab: TaskVocab | None = None
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
    def source(self) -> TaskBatch:
        """The batch itself (the trainer's former ``Batch.source`` pointed at the task batch)."""
        return self

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
        if self.vocab is None or not self.vocab.byte_level:
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


_check_int = check_int  # the shared validator (seqlens.validate), under the tasks' historical name


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
