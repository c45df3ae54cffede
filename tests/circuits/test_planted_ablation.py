"""Ablating a planted head breaks the behaviour it implements, and ablating the others does not
(issue #5's ground truth for every planted circuit: retrieval, successor, sinks; the induction
circuit is covered in test_ablation.py). This is Wu et al.'s causal check on hand-built models."""

from __future__ import annotations

import pytest
import torch

from seqlens.testing.planted_ov import CHAINS, planted_ov_model
from seqlens.testing.planted_retrieval import RETRIEVAL_HEAD, planted_retrieval_model
from seqlens.testing.planted_sinks import planted_sink_model, planted_tokens, task_loss
from seqlens.circuits import ablate_heads, causal_check, needle_accuracy, needle_prompts, sink_scores


@pytest.mark.parametrize("mode", ["zero", "uniform"])
def test_retrieval_needs_the_retrieval_head_and_its_previous_token_head(mode):
    model = planted_retrieval_model()
    prompts = needle_prompts(model, lengths=[16, 32], depths=[0.0, 0.5, 1.0], n_trials=3)
    assert needle_accuracy(model, prompts) == 1.0
    needed = {RETRIEVAL_HEAD, (0, 1)}  # L1H1 copies the needle, keyed on L0H1's previous token
    for head in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        with ablate_heads(model, [head], mode=mode):
            assert needle_accuracy(model, prompts) == (0.0 if head in needed else 1.0), head
    check = causal_check(model, [RETRIEVAL_HEAD], task=lambda m: needle_accuracy(m, prompts), n_random=3,
                         mode=mode, progress=False)
    assert check.baseline == 1.0 and check.ablated == 0.0 and check.fraction_removed() == 1.0


def test_successor_behaviour_needs_the_successor_head():
    model = planted_ov_model()
    tokens = torch.tensor([[ord(c)] for chain in CHAINS for c in chain[:-1]])
    successors = torch.tensor([ord(chain[i + 1]) for chain in CHAINS for i in range(len(chain) - 1)])

    def accuracy() -> float:
        return (model(tokens)[:, 0].argmax(-1) == successors).float().mean().item()

    assert accuracy() == 1.0  # the model predicts each ordinal's successor
    expected = {0: 0.0, 1: 1.0, 3: 1.0}  # successor head / copying head / random distractor
    for head, acc in expected.items():
        with ablate_heads(model, [(0, head)], mode="zero"):
            assert accuracy() == acc, head


def test_sink_and_key_heads_carry_their_behaviour():
    model, tokens = planted_sink_model(), planted_tokens()
    base = sink_scores(model, tokens=tokens).scores
    with ablate_heads(model, [(0, 0)], mode="uniform"):
        flat = sink_scores(model, tokens=tokens).scores
    assert base[0, 0] > 0.9 and flat[0, 0] < 0.1  # the sink head's mass on position 0 is gone
    torch.testing.assert_close(flat[1], base[1])  # later heads (queries and keys untouched) unchanged
    loss = task_loss()
    before = loss(model)
    with ablate_heads(model, [(1, 1)], mode="zero"):
        assert loss(model) > before + 5  # the key head carries the answer
    with ablate_heads(model, [(1, 0)], mode="zero"):
        assert loss(model) < before / 10  # the hidden-sink head only hurts the task
    with ablate_heads(model, [(0, 1)], mode="zero"):
        assert loss(model) == pytest.approx(before, abs=1e-6)  # the ordinary head does nothing here
