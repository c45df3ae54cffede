"""``prompts=`` analyses batch prompts of different lengths (issue 19): the head finders and the
sink scores run the prompts as one right-padded batch, and their results equal each prompt scored
alone through ``tokens=`` (the unbatched path), then averaged, on an attention model and on two
recurrent ones (Mamba, Mamba-2)."""

from __future__ import annotations

import pytest
import torch

from seqlens.circuits.ngram import ngram_scores
from seqlens.circuits.sinks import sink_scores
from seqlens.circuits.token_heads import (duplicate_token_scores, induction_scores, pad_right, padded_batches,
                                          previous_token_scores)
from seqlens.testing.tiny import V, make

# lengths 6, 29 and 47 tokens, each with repeats (duplicate / induction / n-gram targets)
PROMPTS = ["abcabc", "hello world, hello world, hi", "the cat sat on the mat; the cat sat on the hat."]
TOL = 1e-5
FINDERS = {"previous": previous_token_scores, "duplicate": duplicate_token_scores, "induction": induction_scores}


class Bytes:  # a stand-in tokenizer: bytes mod V
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % V for b in text.encode()]}


@pytest.fixture(scope="module", params=["llama", "mamba", "mamba2"])
def model(request):
    m = make(request.param)
    m.tokenizer = Bytes()
    return m


def alone() -> list[torch.Tensor]:
    return [torch.tensor([Bytes()(p)["input_ids"]]) for p in PROMPTS]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    same_nan = torch.equal(a.isnan(), b.isnan())
    return same_nan and bool(((a - b).abs().nan_to_num(0) <= TOL).all())


@pytest.mark.parametrize("measure", ["mul", "abs", "prefix"])
@pytest.mark.parametrize("finder", list(FINDERS))
def test_finder_prompts_equal_each_prompt_alone(model, finder, measure):
    fn = FINDERS[finder]
    batched = fn(model, prompts=PROMPTS, measure=measure).scores
    ref = torch.stack([fn(model, tokens=t, measure=measure).scores for t in alone()]).mean(0)
    assert batched.shape == ref.shape and bool(torch.isfinite(ref).all())
    assert close(batched, ref), (batched - ref).abs().max()


def test_ngram_prompts_equal_each_prompt_alone(model):
    for n in (1, 2):
        batched = ngram_scores(model, n, prompts=PROMPTS).scores
        ref = torch.stack([ngram_scores(model, n, tokens=t).scores for t in alone()]).mean(0)
        assert close(batched, ref)


def test_sink_prompts_equal_each_prompt_alone(model):
    batched = sink_scores(model, prompts=PROMPTS, k=2)
    each = [sink_scores(model, tokens=t, k=2) for t in alone()]
    assert close(batched.scores, torch.stack([e.scores for e in each]).mean(0))
    assert close(batched.first_k_mass, torch.stack([e.first_k_mass for e in each]).mean(0))
    T = max(t.shape[1] for t in alone())
    padded = [torch.nn.functional.pad(e.received, (0, T - e.received.shape[-1]), value=float("nan")) for e in each]
    assert close(batched.received, torch.stack(padded).nanmean(0))
    assert bool(torch.isfinite(batched.received).all())


def test_sink_prompts_stats_backend_equal_pattern_backend():
    """On softmax layers the masses come from attention_stats: masked the same way as the pattern."""
    m = make("llama")
    m.tokenizer = Bytes()
    stats = sink_scores(m, prompts=PROMPTS, k=2)
    pattern = sink_scores(m, prompts=PROMPTS, k=2, backend="pattern")
    assert stats.settings["backend"] != "pattern"
    assert close(stats.scores, pattern.scores) and close(stats.first_k_mass, pattern.first_k_mass)


def test_pad_right_and_batches():
    seqs = [torch.arange(1, 4)[None], torch.arange(1, 2)[None], torch.arange(1, 6)[None]]
    toks, mask = pad_right(seqs, pad=9)
    assert toks.tolist() == [[1, 2, 3, 9, 9], [1, 9, 9, 9, 9], [1, 2, 3, 4, 5]]
    assert mask.sum(1).tolist() == [3, 1, 5]
    # a budget of 30 floats at L^2 per row: rows (3, 1) fit as 2 x 9, then 5 alone (25)
    batches = padded_batches(seqs, lambda L: L * L, budget=30)
    assert [b[0].shape for b in batches] == [torch.Size([2, 3]), torch.Size([1, 5])]
