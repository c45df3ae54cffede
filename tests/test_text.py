"""The one text encoder (seqlens.text.encode) and the one byte-level check (is_byte_level)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from seqlens.corpus import ByteTokenizer
from seqlens.testing.tokenizers import bos_word_tokenizer
from seqlens.text import encode, is_byte_level


@pytest.fixture(scope="module")
def tok():
    return bos_word_tokenizer(["the", "cat", "sat"])


def test_encode_bytes_without_a_tokenizer():
    assert encode("aé") == [97, 0xC3, 0xA9]
    assert encode("") == []


def test_encode_leaves_out_the_tokenizers_bos_unless_asked(tok):
    assert tok.encode("the cat") == [0, 2, 3]  # the tokenizer itself adds BOS ...
    assert encode("the cat", tok) == [2, 3]  # ... encode() does not: pieces concatenate
    assert encode("the cat", tok, bos=True) == [0, 2, 3]  # once, when asked
    assert encode("the cat the cat", tok) == encode("the cat", tok) * 2


def test_encode_plain_encode_and_errors():
    assert encode("hi", ByteTokenizer()) == [104, 105]  # encode(text) without add_special_tokens
    assert encode("hi", ByteTokenizer(), bos=True) == [104, 105]  # no bos_token_id: nothing added
    with pytest.raises(TypeError, match="tokenizer"):
        encode("hi", object())
    with pytest.raises(TypeError, match="text"):
        encode(b"hi")


@pytest.mark.parametrize("tokenizer, vocab, expected", [
    (None, 256, True),            # bytes, no tokenizer
    ("byte", 256, True),          # an attached ByteTokenizer
    (None, 97, False),            # a task vocabulary
    ("hf", 256, False),           # a real tokenizer with 256 ids is not byte-level
    ("hf", 50257, False),
], ids=["bytes", "byte-tokenizer", "task-vocab", "hf-256", "hf"])
def test_is_byte_level(tok, tokenizer, vocab, expected):
    attached = {"byte": ByteTokenizer(), "hf": tok, None: None}[tokenizer]
    model = SimpleNamespace(tokenizer=attached, cfg=SimpleNamespace(vocab_size=vocab))
    assert is_byte_level(model) is expected


def test_the_old_byte_checks_are_the_shared_one():
    from seqlens.app import prompt
    from seqlens.probes import outliers

    assert outliers.is_byte_model is is_byte_level and prompt.is_byte_level is is_byte_level
