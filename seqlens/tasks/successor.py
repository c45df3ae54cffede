"""Ordinal successor task (Gould et al. 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import SeedLike, TaskBatch, _check_int, _pack, _randint, _shift_targets, _span_mask, make_generator
from .text import _Encoder, _SpanBuilder


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
