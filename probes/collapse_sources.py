"""Token sources of the state-collapse probe (see :mod:`seqlens.probes.collapse`): the named
long streams (``"newlines"``, ``"repeat"``, the model's own ``"task"``), given tokens or chunk
iterables, cut into chunks with one boundary on the training length; and the shared argument checks."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from seqlens.tasks import task_kwargs
from seqlens.text import encode, is_byte_level
from seqlens.probes.collapse_result import DEFAULT_TOKENS, NEWLINE_ID, REPEAT_PERIOD, REPEAT_TEXT, SOURCES

# ----------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def train_length(model, train_len: int | None = None) -> tuple[int, str]:
    """``(L, where it came from)``: ``train_len`` if given, else the recipe's
    ``data_kwargs["seq_len"]`` (the length the organism was trained at), else ``cfg.n_ctx``."""
    if train_len is not None:
        return _positive_int("train_len", train_len), "argument"
    recipe = model.recipe
    seq_len = None if recipe is None else task_kwargs(recipe).get("seq_len")
    if isinstance(seq_len, int) and seq_len > 0:
        return seq_len, "recipe.data_kwargs['seq_len']"
    return model.cfg.n_ctx, "cfg.n_ctx"


# ----------------------------------------------------------------------------- token sources


def _text_ids(model, text: str) -> list[int]:
    return encode(text, model.tokenizer)  # no BOS: the text is repeated


class _Generated:
    """A lazily generated ``[batch, ∞)`` token stream: ``get(pos, length) -> (tokens, mask)`` for
    consecutive requests (only the unconsumed part of the task buffer is kept)."""

    def __init__(self, model, source: str, batch: int, seed: int):
        self.batch, self.seed, self.source = batch, seed, source
        V = model.cfg.vocab_size
        if source == "newlines":
            nl = _text_ids(model, "\n")[-1] if model.tokenizer is not None else NEWLINE_ID
            self.nl = nl if nl < V else 0
            self.description = f"token {self.nl} ('\\n' in byte vocabularies) repeated"
        elif source == "repeat":
            if is_byte_level(model) or model.tokenizer is not None:
                period = torch.tensor(_text_ids(model, REPEAT_TEXT), dtype=torch.long)
                self.description = f"{REPEAT_TEXT!r} repeated ({len(period)} tokens)"
            else:
                g = torch.Generator().manual_seed(seed)
                period = torch.randint(0, V, (REPEAT_PERIOD,), generator=g)
                self.description = f"{REPEAT_PERIOD} random tokens (seed {seed}) repeated"
            self.period = period
        else:
            self._init_task(model)

    def _init_task(self, model) -> None:
        recipe = model.recipe
        if recipe is None:
            raise ValueError("source: 'task' needs a model with a training recipe (model.recipe is None); "
                             "pass 'newlines', 'repeat' or tokens")
        self.data, self.kwargs = recipe.data, task_kwargs(recipe)
        if self.data == "corpus:stdlib":
            from seqlens.corpus import StdlibCorpus

            self.text = StdlibCorpus().tokens("val")
            self.offsets = [r * len(self.text) // self.batch for r in range(self.batch)]
            self.description = "the stdlib corpus' validation split, streamed (wrapping around)"
        else:
            self.buffer = torch.zeros(self.batch, 0, dtype=torch.long)
            self.mask_buffer = torch.zeros(self.batch, 0, dtype=torch.bool)
            self.draws = 0
            self.masked = getattr(recipe, "train_on", "all") == "mask"
            self.description = (f"independent {self.data} sequences ({self.kwargs}) concatenated, "
                                f"seeds {self.seed}, {self.seed}+1, ...")

    @property
    def loss_positions(self) -> str:
        if self.source == "task" and self.data != "corpus:stdlib" and self.masked:
            return "the task's loss_mask (the recipe trains on it: train_on='mask')"
        return "every position"

    def get(self, pos: int, length: int) -> tuple[Tensor, Tensor | None]:
        """``(tokens [batch, length], loss mask or None)`` for positions ``[pos, pos + length)``;
        the mask (task streams of recipes trained on the task's ``loss_mask``) marks the logits
        whose loss counts."""
        if self.source == "newlines":
            return torch.full((self.batch, length), self.nl, dtype=torch.long), None
        if self.source == "repeat":
            p = len(self.period)
            idx = (pos + torch.arange(length)[None] + torch.arange(self.batch)[:, None] * (p // self.batch)) % p
            return self.period[idx], None
        if self.data == "corpus:stdlib":
            n = len(self.text)
            idx = (torch.tensor(self.offsets)[:, None] + pos + torch.arange(length)[None]) % n
            return self.text[idx].long(), None
        from seqlens.tasks import make_task

        while self.buffer.shape[1] < length:
            kw = {**self.kwargs, "batch": self.batch, "seed": self.seed + self.draws}
            self.draws += 1
            task = make_task(self.data.removeprefix("task:"), **kw)
            self.buffer = torch.cat([self.buffer, task.tokens], 1)
            self.mask_buffer = torch.cat([self.mask_buffer, task.loss_mask], 1)
        out, self.buffer = self.buffer[:, :length], self.buffer[:, length:]
        mask, self.mask_buffer = self.mask_buffer[:, :length], self.mask_buffer[:, length:]
        return out, (mask if self.masked else None)


def _boundaries(n: int | None, chunk: int, train_len: int) -> Iterator[tuple[int, int]]:
    """Chunk spans ``[a, b)``: multiples of ``chunk`` plus one boundary at ``train_len``."""
    pos = 0
    while n is None or pos < n:
        nxt = (pos // chunk + 1) * chunk
        if pos < train_len < nxt:
            nxt = train_len
        if n is not None:
            nxt = min(nxt, n)
        yield pos, nxt
        pos = nxt


def _rechunk(chunks: Iterable[Tensor], spans: Iterator[tuple[int, int]],
             limit: int | None) -> Iterator[tuple[Tensor, None]]:
    """Re-cut an iterable of ``[B, T]`` chunks along ``spans`` (stops at ``limit`` tokens or when
    the input ends); holds at most one input chunk plus one output chunk."""
    buf: list[Tensor] = []
    have = 0
    it = iter(chunks)
    for a, b in spans:
        if limit is not None and a >= limit:
            return
        need = b - a
        while have < need:
            nxt = next(it, None)
            if nxt is None:
                break
            if not isinstance(nxt, Tensor) or nxt.dim() != 2:
                raise ValueError(f"source: expected an iterable of [batch, T] token tensors, got "
                                 f"{type(nxt).__name__} {list(getattr(nxt, 'shape', []))}")
            buf.append(nxt)
            have += nxt.shape[1]
        if have == 0:
            return
        cat = torch.cat(buf, 1) if len(buf) > 1 else buf[0]
        take = min(need, have)
        yield cat[:, :take], None
        rest = cat[:, take:]
        buf, have = ([rest] if rest.shape[1] else []), rest.shape[1]
        if take < need:
            return


def _token_chunks(model, source: Any, n_tokens: int | None, chunk: int, train_len: int,
                  batch: int | None, seed: int) -> tuple[Iterator[tuple[Tensor, Tensor | None]], str, str, int | None]:
    """``(chunks of (tokens, loss mask or None), description, scored positions, total or None)``."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {list(SOURCES)} or token ids [batch, length] / an "
                             f"iterable of [batch, T] chunks, got {source!r}")
        n = DEFAULT_TOKENS if n_tokens is None else n_tokens
        gen = _Generated(model, source, 1 if batch is None else batch, seed)
        spans = _boundaries(n, chunk, train_len)
        return (gen.get(a, b - a) for a, b in spans), gen.description, gen.loss_positions, n
    if isinstance(source, Tensor):
        if source.dim() != 2:
            raise ValueError(f"source: expected token ids of shape [batch, length], got {list(source.shape)}")
        if batch is not None and batch != source.shape[0]:
            raise ValueError(f"batch: {batch} does not match the tokens' batch {source.shape[0]}")
        n = source.shape[1] if n_tokens is None else n_tokens
        if n > source.shape[1]:
            raise ValueError(f"n_tokens: {n} exceeds the {source.shape[1]} tokens given")
        spans = _boundaries(n, chunk, train_len)
        return ((source[:, a:b], None) for a, b in spans), "tokens", "every position", n
    if isinstance(source, Iterable):
        spans = _boundaries(n_tokens, chunk, train_len)
        return _rechunk(source, spans, n_tokens), "iterable of chunks", "every position", n_tokens
    raise ValueError(f"source: expected one of {list(SOURCES)}, a LongTensor [batch, length] or an iterable "
                     f"of [batch, T] chunks, got {type(source).__name__}")
