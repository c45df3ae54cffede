"""Text to token ids for any model, in one place.

:func:`encode` is the only text encoder of the library (tasks, probes, circuits and the app call
it) and :func:`is_byte_level` the only "token id = byte value" test, so that every analysis
tokenizes a prompt the same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode", "is_byte_level"]


def encode(text: str, tokenizer: Any = None, *, bos: bool = False) -> list[int]:
    """Token ids of ``text``: its UTF-8 bytes when ``tokenizer`` is None, else ``tokenizer.encode``
    without special tokens (a plain ``encode(text)`` when it has no ``add_special_tokens`` keyword).

    Special tokens are left out because callers concatenate pieces: a tokenizer that prepends BOS
    would otherwise put one inside every piece (or every period of a repeated text).
    ``bos=True`` prepends the tokenizer's ``bos_token_id`` once (nothing when it has none).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    if tokenizer is None:
        return list(text.encode("utf-8"))
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError("tokenizer: expected an object with an encode(text) method "
                        f"(Hugging Face style), got {type(tokenizer).__name__}")
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a plain encode(text) without Hugging Face's keyword
        ids = tokenizer.encode(text)
    ids = [int(i) for i in ids]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return [int(bos_id), *ids] if bos and bos_id is not None else ids


def is_byte_level(model: Any) -> bool:
    """Token id = byte value: the model's tokenizer is a :class:`~seqlens.corpus.ByteTokenizer`,
    or it has no tokenizer and a 256-token vocabulary (a model with another tokenizer never is)."""
    from seqlens.corpus import ByteTokenizer

    tok = getattr(model, "tokenizer", None)
    return isinstance(tok, ByteTokenizer) or (tok is None and model.cfg.vocab_size == 256)
