"""Retrieval heads (docs/methods.md §2, Wu et al. 2024): planted ground truth, the counting rule, the
one-forward shortcut, every architecture, the passkey organism and input validation."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted_retrieval import KEY, RETRIEVAL_HEAD, V, planted_retrieval_model
from seqlens.circuits.heads import HeadScores
from seqlens.circuits.retrieval import (NeedlePrompt, answer_recall, copy_hits, greedy_decode, needle_accuracy,
                                        needle_prompts, retrieval_scores)
from seqlens.corpus import ByteTokenizer
from seqlens.models import ModelConfig, build
from seqlens.tasks import passkey

GRID = {"lengths": [16, 32], "depths": [0.0, 0.5, 1.0], "n_trials": 3}


@pytest.fixture(scope="module")
def planted():
    return planted_retrieval_model()


@pytest.fixture(scope="module")
def planted_prompts(planted):
    return needle_prompts(planted, **GRID)


def _corrupt(prompt: NeedlePrompt) -> NeedlePrompt:
    """The same prompt with a recorded answer the model cannot produce (tokens it never outputs)."""
    return dataclasses.replace(prompt, answer=torch.full_like(prompt.answer, 1))


# ----------------------------------------------------------------------------- prompts


def test_token_prompts_layout(planted_prompts):
    assert len(planted_prompts) == 2 * 3 * 3
    for p in planted_prompts:
        s, e = p.span
        assert len(p.tokens) + len(p.answer) == p.length
        assert torch.equal(p.tokens[s:e], p.answer) and p.tokens[s - 1] == KEY and p.tokens[-1] == KEY
        assert p.tokens[0] == 0 and (p.tokens == KEY).sum() == 2 and len(set(p.answer.tolist())) == 3
    # cut = round(depth * n_fill) haystack tokens before the needle (n_fill = 7 at length 16)
    assert [p.actual_depth for p in planted_prompts[:9:3]] == [0.0, 4 / 7, 1.0]


def test_passkey_organism_prompts_are_its_training_format():
    m = _passkey_model()
    prompts = needle_prompts(m, depths=[0.5], n_trials=3, seed=1)
    batch = passkey(3, 64, depth=0.5, key_len=5, seed=1, style="compact")  # the recipe's task
    for b, p in enumerate(prompts):
        assert p.kind == "bytes" and p.length == 64 and p.text == batch.meta["key"][b]
        assert torch.equal(torch.cat([p.tokens, p.answer]), batch.tokens[b])
        assert bytes(p.tokens[p.span[0]:p.span[1]].tolist()).decode() == p.text


def test_text_prompts_use_the_tokenizer():
    m = build(ModelConfig(arch="transformer", vocab_size=256, d_model=16, n_layers=1, n_heads=2,
                          positions="rotary"), seed=0).eval()
    m.tokenizer = ByteTokenizer()
    (p,) = needle_prompts(m, lengths=300, depths=0.5, n_trials=1)
    assert p.kind == "text" and "pass key" in m.tokenizer.decode(p.tokens)
    assert m.tokenizer.decode(p.answer) == " " + p.text == m.tokenizer.decode(p.tokens[p.span[0]:p.span[1]])
    assert answer_recall(p, m.tokenizer.encode(f"{p.text}. Remember")[:], m.tokenizer) == 1.0
    res = retrieval_scores(m, lengths=40, depths=[0.0], n_trials=2, style="compact", only_correct=False,
                           progress=False)
    assert res.settings["criterion"] == "ROUGE-1 recall > 0.5 (words)" and torch.isfinite(res.scores).all()


def test_answer_recall_is_clipped_token_overlap():
    p = NeedlePrompt(tokens=torch.zeros(4, dtype=torch.long), answer=torch.tensor([1, 2, 2]), span=(1, 4),
                     length=7, depth=0.0, actual_depth=0.0, text=None, kind="tokens")
    assert answer_recall(p, [2, 5, 1]) == pytest.approx(2 / 3)
    assert answer_recall(p, [2, 2, 2, 2]) == pytest.approx(2 / 3)
    assert answer_recall(p, [7, 7, 7]) == 0.0


# ----------------------------------------------------------------------------- planted circuit


def test_planted_retrieval_head_scores_one_and_others_zero(planted, planted_prompts):
    assert needle_accuracy(planted, planted_prompts) == 1.0
    assert needle_accuracy(planted, planted_prompts, measure="exact") == 1.0
    res = retrieval_scores(planted, **GRID, progress=False)
    expected = torch.zeros(2, 2)
    expected[RETRIEVAL_HEAD] = 1.0  # 3 steps × 1/(e−s) = 1/3 each, every trial
    assert torch.equal(res.scores, expected), res.scores
    s = res.settings
    assert s["heads"] == [list(RETRIEVAL_HEAD)] and s["counted_trials"] == s["trials"] == 18
    assert s["accuracy"] == [[1.0] * 3] * 2 and s["lengths"] == [16, 32] and s["depths"] == [0.0, 0.5, 1.0]
    assert res.name == "retrieval" and HeadScores.from_json(res.to_json()).settings == s


def test_copy_check_rejects_in_span_attention_to_the_wrong_token(planted, planted_prompts):
    # L0H0 (duplicate head) attends inside the answer span at the generated steps, but to the token
    # equal to the query, not to the one generated next: only x_{j*} = w keeps it at 0
    p = planted_prompts[4]
    P, (s, e) = len(p.tokens), p.span
    seq = torch.cat([p.tokens, p.answer])[None]
    j = planted.mixer_pattern(seq[:, :-1], 0)[0, 0, P:].argmax(-1)
    assert all(s <= int(x) < e for x in j)
    assert copy_hits(planted, seq, P, torch.tensor([p.span]))[0, 0, 0] == 0


def test_wrong_answers_are_not_counted(planted, planted_prompts):
    wrong = [_corrupt(p) for p in planted_prompts]
    with pytest.warns(RuntimeWarning, match="no trial"):
        res = retrieval_scores(planted, prompts=wrong, progress=False)
    assert res.settings["counted_trials"] == 0 and torch.equal(res.scores, torch.zeros(2, 2))
    assert res.settings["heads"] == [] and res.settings["accuracy"] == [[0.0] * 3] * 2
    # the same trials counted anyway: the head still copies from the needle
    assert retrieval_scores(planted, prompts=wrong, only_correct=False, progress=False).scores[RETRIEVAL_HEAD] == 1
    half = [_corrupt(p) if i % 2 else p for i, p in enumerate(planted_prompts)]
    mixed = retrieval_scores(planted, prompts=half, progress=False)
    assert mixed.settings["counted_trials"] == 9 and mixed.scores[RETRIEVAL_HEAD] == 1
    assert needle_accuracy(planted, half) == 0.5


def test_model_that_cannot_retrieve_gets_no_counted_trials(planted_prompts):
    broken = planted_retrieval_model(copy=False)
    assert needle_accuracy(broken, planted_prompts) == 0.0
    with pytest.warns(RuntimeWarning):
        res = retrieval_scores(broken, prompts=planted_prompts, progress=False)
    assert res.settings["counted_trials"] == 0 and not res.scores.any()


# ----------------------------------------------------------------------------- one forward


@pytest.mark.parametrize("name", ["attn_only", "mamba", "gla"])
def test_one_forward_rows_equal_per_step_last_rows(name):
    # the query row P-1+i of one causal forward over prompt + generated equals the last row of the
    # pattern of the prefix the model decoded w_i from
    m = tiny_models.make(name).eval()
    toks = torch.stack([p.tokens for p in needle_prompts(m, 16, 0.5, n_trials=2)])
    gen = greedy_decode(m, toks, 3)
    seq, P = torch.cat([toks, gen], 1), toks.shape[1]
    full = m.mixer_pattern(seq[:, :-1], 1)
    for i in range(3):
        last = m.mixer_pattern(seq[:, :P + i], 1)[:, :, -1]
        torch.testing.assert_close(full[:, :, P - 1 + i, :P + i], last, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(tiny_models.CONFIGS))
def test_finite_on_every_architecture(name):
    m = tiny_models.make(name).eval()
    res = retrieval_scores(m, lengths=16, depths=[0.0, 1.0], n_trials=2, only_correct=False, progress=False)
    n_heads = m.mixer_pattern(torch.zeros(1, 2, dtype=torch.long), 0).shape[1]
    assert res.scores.shape == (m.cfg.n_layers, n_heads)
    assert torch.isfinite(res.scores).all() and (res.scores >= 0).all() and (res.scores <= 1).all()
    assert res.settings["pattern"] == ("implicit attention (METHODS.md §7)" if m.cfg.is_recurrent else "softmax")


# ----------------------------------------------------------------------------- passkey organism


def _passkey_model():
    import seqlens

    return seqlens.load("passkey-mamba-n4").eval()


def test_passkey_organism_answers_and_scores_are_finite():
    m = _passkey_model()
    res = retrieval_scores(m, depths=[0.25, 0.75], n_trials=2, progress=False)
    s = res.settings
    assert s["kind"] == "bytes" and s["lengths"] == [64] and s["accuracy"] == [[1.0, 1.0]]
    assert s["counted_trials"] == 4 and res.scores.shape == (3, 8)
    assert torch.isfinite(res.scores).all() and (res.scores >= 0).all() and (res.scores <= 1).all()
    assert s["argmax_over"].startswith("|alpha|")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, name", [
    ({"lengths": [64]}, "lengths"),  # beyond n_ctx=32 (learned positions)
    ({"lengths": [5]}, "lengths"),  # too short for a 3-token needle
    ({"lengths": []}, "lengths"),
    ({"lengths": [16], "depths": [1.5]}, "depths"),
    ({"lengths": [16], "n_trials": 0}, "n_trials"),
    ({"lengths": [16], "kind": "words"}, "kind"),
    ({"lengths": [16], "kind": "text"}, "kind"),  # no tokenizer
    ({"lengths": [16], "style": "long"}, "style"),
    ({"lengths": [16], "answer_len": 8}, "answer_len"),  # only 7 answer tokens in vocab 16
])
def test_bad_prompt_arguments_raise(planted, kwargs, name):
    with pytest.raises(ValueError, match=name):
        needle_prompts(planted, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"prompts": []}, "prompts"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 10}, "max_new_tokens"),  # 29 + 10 - 1 > n_ctx = 32
    ({"threshold": "high"}, "threshold"),
    ({"batch_size": 0}, "batch_size"),
    ({"lengths": [32]}, "prompts"),  # prompts given together with a grid
])
def test_bad_score_arguments_raise(planted, planted_prompts, kwargs, name):
    kwargs.setdefault("prompts", [p for p in planted_prompts if p.length == 32])
    with pytest.raises(ValueError, match=name):
        retrieval_scores(planted, progress=False, **kwargs)


def test_bad_accuracy_arguments_raise(planted, planted_prompts):
    with pytest.raises(ValueError, match="measure"):
        needle_accuracy(planted, planted_prompts, measure="f1")
    with pytest.raises(ValueError, match="prompts"):
        needle_accuracy(planted, planted_prompts[0])


def test_copy_hits_run_only_on_counted_trials(planted, planted_prompts, monkeypatch):
    """The implicit attention is the cost: trials answered wrong (not counted) are never scored."""
    import seqlens.circuits.retrieval as retrieval

    scored: list[int] = []
    real = retrieval.copy_hits
    monkeypatch.setattr(retrieval, "copy_hits", lambda m, seq, P, spans: scored.append(len(seq)) or real(m, seq, P, spans))
    half = [_corrupt(p) if i % 2 else p for i, p in enumerate(planted_prompts)]
    assert retrieval_scores(planted, prompts=half, progress=False).scores[RETRIEVAL_HEAD] == 1
    assert sum(scored) == 9
    scored.clear()
    retrieval_scores(planted, prompts=half, only_correct=False, progress=False)
    assert sum(scored) == 18


@pytest.mark.parametrize("name", list(tiny_models.CONFIGS))
def test_stateful_greedy_decode_equals_full_reforward(name):
    """A clean model decodes from its state (forward_chunk + step); with a hook attached every step
    re-runs the full forward. Both give the same tokens."""
    m = tiny_models.make(name).eval()
    toks = tiny_models.tokens(3, 12, seed=1)
    fast = greedy_decode(m, toks, 5)
    from seqlens.models.hooks import attached_hooks

    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):  # forces the full forward
        assert attached_hooks(m)
        slow = greedy_decode(m, toks, 5)
    assert fast.shape == (3, 5) and torch.equal(fast, slow)
