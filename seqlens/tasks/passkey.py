"""Passkey retrieval (Mohtashami & Jaggi 2023)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .base import SeedLike, TaskBatch, _check_int, _pack, _shift_targets, _span_mask, make_generator
from .text import _Encoder, _SpanBuilder


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
