"""Token-pattern head finders (docs/methods.md §1): planted ground truth, agreement with
TransformerLens' head_detector, every architecture, and the Result API."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens import head_detector as tl

from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted import PLANTED, V, planted_model
from seqlens.circuits import (HeadScores, duplicate_token_scores, induction_scores, layer_patterns,
                              previous_token_scores, repeated_random_tokens, template_score)
from seqlens.circuits.token_heads import (duplicate_token_template, induction_template,
                                          prefix_score, previous_token_template)

FINDERS = {"previous_token": previous_token_scores, "duplicate_token": duplicate_token_scores,
           "induction": induction_scores}
MARGIN = 0.4  # planted head's score minus the best other head's, every measure


@pytest.fixture(scope="module")
def planted():
    return planted_model()


# ----------------------------------------------------------------------------- planted circuit


@pytest.mark.parametrize("measure", ["mul", "abs", "prefix"])
@pytest.mark.parametrize("family", list(FINDERS))
def test_planted_head_ranks_first(planted, family, measure):
    res = FINDERS[family](planted, measure=measure, seq_len=32, batch=10, seed=0)
    (best, s1), (_, s2) = res.top(2)
    assert best == PLANTED[family], res.scores
    assert s1 - s2 > MARGIN, res.scores


def test_planted_induction_on_distinct_repeats_is_exact(planted):
    # distinct tokens repeated: the prefix score (general text form) of L1H1 is ~1, the others ~0
    tokens = torch.cat([torch.randperm(V, generator=torch.Generator().manual_seed(s))[None].repeat(1, 2)
                        for s in range(3)])
    res = induction_scores(planted, tokens=tokens, measure="prefix")
    # 0.969 = 1 - 0.5/16: L0H1 at position 0 copies x_0 itself into PREV, so the query repeating
    # x_0 splits its attention between keys 0 and 1 (a true property of the planted circuit)
    assert res.scores[1, 1] > 0.95
    assert res.top(2)[1][1] < 0.1
    prev = previous_token_scores(planted, tokens=tokens, measure="prefix")
    assert prev.scores[0, 1] > 0.99


def test_prefix_period_form_matches_general_form_on_distinct_tokens(planted):
    tokens = torch.randperm(V, generator=torch.Generator().manual_seed(1))[None].repeat(1, 2)
    pats = layer_patterns(planted, tokens)
    from seqlens.circuits.token_heads import prefix_score
    for p in pats:
        torch.testing.assert_close(prefix_score(p, induction_template(tokens), period=V),
                                   prefix_score(p, induction_template(tokens)), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- TransformerLens


def _random_causal(B, H, L, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, H, L, L, generator=g).tril()
    return a / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("name", ["previous_token", "duplicate_token", "induction"])
def test_templates_equal_transformer_lens(name):
    tokens = torch.randint(0, 5, (3, 12), generator=torch.Generator().manual_seed(0))
    ours = {"previous_token": previous_token_template, "duplicate_token": duplicate_token_template,
            "induction": induction_template}[name](tokens)
    theirs = getattr(tl, f"get_{name}_head_detection_pattern")
    for b in range(3):
        assert torch.equal(ours[b], theirs(tokens[b:b + 1]).float())


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current", [False, True])
@pytest.mark.parametrize("measure", ["mul", "abs"])
def test_template_score_equals_transformer_lens(measure, exclude_bos, exclude_current):
    """Per-sequence scores averaged over the batch, as detect_head does for a list of prompts.
    mul: within 1e-5; abs: TransformerLens rounds to 3 decimals, so within 5e-4."""
    tokens = torch.randint(0, 4, (3, 10), generator=torch.Generator().manual_seed(2))
    pattern = _random_causal(3, 2, 10, seed=3)
    for make in (previous_token_template, duplicate_token_template, induction_template):
        P = make(tokens)
        ours = template_score(pattern, P, measure, exclude_bos, exclude_current)
        for h in range(2):
            ref = sum(tl.compute_head_attention_similarity_score(
                pattern[b, h].clone(), P[b], exclude_bos=exclude_bos, exclude_current_token=exclude_current,
                error_measure=measure) for b in range(3)) / 3
            assert abs(ours[h].item() - ref) <= (1e-5 if measure == "mul" else 5e-4 + 1e-6)


def test_finder_equals_transformer_lens_on_model_patterns(planted):
    tokens = repeated_random_tokens(2, 12, V, seed=5)
    res = induction_scores(planted, tokens=tokens, measure="mul", exclude_bos=True)
    pats = layer_patterns(planted, tokens)
    for layer in range(2):
        for h in range(2):
            ref = sum(tl.compute_head_attention_similarity_score(
                pats[layer][b, h].clone(), tl.get_induction_head_detection_pattern(tokens[b:b + 1]),
                exclude_bos=True, exclude_current_token=False, error_measure="mul") for b in range(2)) / 2
            assert abs(res.scores[layer, h].item() - ref) < 1e-5


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", list(tiny_models.CONFIGS))
def test_every_architecture(arch):
    model = tiny_models.make(arch)
    tokens = repeated_random_tokens(2, 8, tiny_models.V, seed=0)
    for (family, finder), measure in zip(FINDERS.items(), ["mul", "abs", "prefix"]):
        res = finder(model, tokens=tokens, measure=measure)
        assert res.scores.shape == (model.cfg.n_layers, 4)
        assert torch.isfinite(res.scores).all(), (family, measure)
        assert res.settings["arch"] == model.cfg.arch
    default = induction_scores(model, seq_len=12, batch=1)
    assert default.settings["data"] == "repeated_random_tokens"
    assert default.settings["normalisation"] == ("abs_rows" if model.cfg.is_recurrent else "none")


# ----------------------------------------------------------------------------- errors and API


def test_errors_name_the_argument(planted):
    with pytest.raises(ValueError, match="prompts"):
        previous_token_scores(planted, prompts="hello")
    with pytest.raises(ValueError, match="measure"):
        induction_scores(planted, measure="max", seq_len=16)
    with pytest.raises(ValueError, match="tokens, prompts"):
        induction_scores(planted, tokens=torch.zeros(1, 4, dtype=torch.long), prompts="x")
    with pytest.raises(ValueError, match="seq_len"):
        induction_scores(planted, seq_len=7)


def test_result_api():
    import plotly.graph_objects as go

    res = HeadScores(scores=torch.tensor([[0.1, 0.9], [0.5, 0.3]]), name="induction",
                     settings={"measure": "prefix", "seed": 0})
    assert res.top(2) == [((0, 1), pytest.approx(0.9)), ((1, 0), pytest.approx(0.5))]
    frame = res.to_frame()
    assert list(frame.columns) == ["layer", "head", "score"] and len(frame) == 4
    assert frame.loc[frame.score.idxmax(), ["layer", "head"]].tolist() == [0, 1]
    assert isinstance(res.figure(), go.Figure)
    assert res.figure(title="mine", height=300).layout.title.text == "mine"  # caller's layout wins
    text = res.to_json()
    assert json.loads(text)["scores"]["__tensor__"][0][1] == pytest.approx(0.9)
    back = HeadScores.from_json(text)
    assert torch.equal(back.scores, res.scores) and back.name == res.name and back.settings == res.settings
    with pytest.raises(ValueError, match="k"):
        res.top(0)


# ----------------------------------------------------------------------------- default data with a BOS


def test_repeated_random_tokens_with_bos_and_excluded_ids():
    t = repeated_random_tokens(4, 30, 8, seed=1, bos=0, exclude=[7])
    assert t.shape == (4, 61) and (t[:, 0] == 0).all()
    assert torch.equal(t[:, 1:31], t[:, 31:])
    assert not ((t[:, 1:] == 0) | (t[:, 1:] == 7)).any()
    assert set(t[:, 1:].unique().tolist()) == set(range(1, 7))
    with pytest.raises(ValueError, match="exclude"):
        repeated_random_tokens(1, 3, 2, bos=0, exclude=[1])


def test_prefix_period_form_with_bos_equals_general_form(planted):
    # with a BOS the second copy starts one later; the period form must score exactly those rows
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randperm(V - 1, generator=g)[:12] + 1 for _ in range(3)])  # distinct, no 0
    tokens = torch.cat([torch.zeros(3, 1, dtype=torch.long), ids, ids], dim=1)
    for p in layer_patterns(planted, tokens):
        torch.testing.assert_close(prefix_score(p, induction_template(tokens), period=12, start=1),
                                   prefix_score(p, induction_template(tokens)))


def test_default_data_uses_the_zoo_task_bos():
    import seqlens

    model = seqlens.load("induction-attn2")
    res = induction_scores(model)
    assert res.settings["bos"] == 0 and res.settings["excluded_tokens"] == [0]
    (best, score), = res.top(1)
    assert best[0] == 1 and score > 0.5, res.scores  # the organism's layer-1 induction heads
