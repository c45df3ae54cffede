"""Text to task token ids: UTF-8 bytes or a Hugging Face-style tokenizer (through
:func:`seqlens.text.encode`), and span bookkeeping for the text tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seqlens.text import encode

from .base import BYTE_VOCAB, TaskVocab


class _Encoder:
    """Text to token ids (:func:`seqlens.text.encode`) bound to one tokenizer, and its task vocabulary."""

    def __init__(self, tokenizer: Any = None) -> None:
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("tokenizer: expected an object with an encode(text) method "
                            f"(Hugging Face style), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.byte_level = tokenizer is None

    def __call__(self, text: str) -> list[int]:
        return encode(text, self.tokenizer)

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
