"""Verbatim short-term memory paradigm over noun lists (Armeni et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch

from .base import SeedLike, TaskBatch, _check_int, _pack, _shift_targets, _span_mask, make_generator
from .text import _Encoder, _SpanBuilder


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
