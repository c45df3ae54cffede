"""A local Hugging Face tokenizer for tests: word-level (one whitespace-separated word = one id),
and ``encode()`` prepends BOS the way Llama-family tokenizers do, so code that concatenates or
repeats encoded pieces can be checked for stray BOS tokens."""

from __future__ import annotations

from collections.abc import Iterable

BOS, UNK = "<bos>", "<unk>"


def bos_word_tokenizer(words: Iterable[str]):
    """A ``PreTrainedTokenizerFast``: ids ``<bos>`` = 0, ``<unk>`` = 1, then ``words`` in order
    (duplicates once); ``encode(text)`` gives ``[0, ...]``, ``encode(text, add_special_tokens=False)``
    the words only."""
    import tokenizers
    import transformers

    vocab = {BOS: 0, UNK: 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=UNK))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.post_processor = tokenizers.processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, unk_token=UNK)
