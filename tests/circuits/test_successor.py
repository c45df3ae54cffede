"""Successor heads (docs/methods.md §3, Gould et al. 2023): planted ground truth, ordinal sets for
tokenizers, byte-level models and zoo organisms, every architecture, bad input."""

from __future__ import annotations

import pytest
import torch

import seqlens
from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted_ov import ANTI, COPYING, SUCCESSOR, planted_ov_model
from seqlens.circuits.heads import HeadScores
from seqlens.circuits.successor import BYTE_SETS, ordinal_sets, successor_scores


@pytest.fixture(scope="module")
def planted():
    return planted_ov_model()


def _bytes(s: str) -> list[int]:
    return list(s.encode())


# ----------------------------------------------------------------------------- planted circuit


def test_planted_successor_head_ranks_first(planted):
    res = successor_scores(planted)
    s = res.scores[0]
    assert s[SUCCESSOR] == 1.0
    (best, s1), (_, s2) = res.top(2)
    assert best == (0, SUCCESSOR) and s1 - s2 > 0.8, s
    assert s[COPYING] == 0.0  # argmax is the token itself, never its successor
    assert s[ANTI] < 0.1  # -I wins only from each set's first item (3 of 59 pairs)
    assert res.settings["heads"] == [[0, SUCCESSOR]]
    assert res.settings["pairs"] == {"digits": 9, "lowercase": 25, "uppercase": 25}
    for per_set in res.settings["per_set"].values():
        assert per_set[0, SUCCESSOR] == 1.0
    # the norms of the planted model are identities: every option gives the same answer
    for opts in ({"fold_ln": False}, {"mlp0": False}, {"ln": False, "resid": False}):
        torch.testing.assert_close(successor_scores(planted, **opts).scores, res.scores)


def test_planted_successor_with_user_sets(planted):
    res = successor_scores(planted, sets={"digits": _bytes("0123456789")})
    assert res.scores[0, SUCCESSOR] == 1.0 and res.settings["sets_source"] == "user"
    # a backwards chain is not a successor chain for H0
    back = successor_scores(planted, sets={"down": _bytes("987654321")})
    assert back.scores[0, SUCCESSOR] == 0.0


# ----------------------------------------------------------------------------- ordinal sets


def test_byte_sets_of_a_byte_model(planted):
    assert ordinal_sets(planted) == {k: _bytes("".join(v)) for k, v in BYTE_SETS.items()}


def test_successor_organism_uses_its_task_vocabulary():
    model = seqlens.load("successor-transformer")
    sets = ordinal_sets(model)
    assert sets == {"numbers": _bytes("123456789"), "letters": _bytes("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
    res = successor_scores(model)
    assert torch.isfinite(res.scores).all() and res.scores.shape == (2, 4)
    assert res.settings["pairs"] == {"numbers": 8, "letters": 25}


class FakeTokenizer:
    """Single tokens for a few words (with their leading space); anything else splits per char."""

    def __init__(self, words: list[str]):
        self.ids = {w: 200 + i for i, w in enumerate(words)}

    def encode(self, text, add_special_tokens=True):
        return [self.ids[text]] if text in self.ids else [ord(c) % 100 for c in text]


def test_tokenizer_sets_drop_multi_token_items_and_keep_gaps():
    words = [f" {i}" for i in (1, 2, 3, 4, 6, 7)] + [" Monday", " Tuesday", " Jan", " Feb", " Mar", " A"]
    model = tiny_models.make("attn_only")
    model = seqlens.models.build(model.cfg.replace(vocab_size=300))
    model.tokenizer = FakeTokenizer(words)
    ids = model.tokenizer.ids
    sets = ordinal_sets(model)
    # " 5" is two tokens: dropped; weekdays (2 items) and letters (1 item) are dropped
    assert sets == {"numbers": [ids[f" {i}"] for i in (1, 2, 3, 4, 6, 7)],
                    "months_short": [ids[" Jan"], ids[" Feb"], ids[" Mar"]]}
    gappy = ordinal_sets(model, gaps=True)
    assert gappy["numbers"] == [ids[" 1"], ids[" 2"], ids[" 3"], ids[" 4"], None, ids[" 6"], ids[" 7"]]
    res = successor_scores(model)
    assert res.settings["pairs"] == {"numbers": 4, "months_short": 2}  # no pair spans " 5"
    assert torch.isfinite(res.scores).all()


# ----------------------------------------------------------------------------- architectures, zoo


@pytest.mark.parametrize("name", list(tiny_models.CONFIGS))
def test_every_architecture_has_finite_scores(name):
    model = tiny_models.make(name)
    res = successor_scores(model, sets={"ids": list(range(1, 40)), "odd": list(range(41, 90, 2))})
    assert torch.isfinite(res.scores).all() and ((res.scores >= 0) & (res.scores <= 1)).all()
    assert res.settings["pairs"] == {"ids": 38, "odd": 24}


@pytest.mark.parametrize("name", ["mqar-mamba", "mqar-mamba2", "mqar-gla", "mqar-mingru", "mqar-lstm"])
def test_mqar_organisms(name):
    model = seqlens.load(name)
    # a task vocabulary: the non-special ids in numeric order (ordinal by index only)
    assert ordinal_sets(model) == {"token_ids": list(range(1, 128))}  # MQAR: pad 0 is the special
    for res in (successor_scores(model), successor_scores(model, sets={"keys": list(range(1, 64))})):
        assert torch.isfinite(res.scores).all()
        assert res.settings["ov"].startswith("linearised")


def test_model_without_any_ordinal_vocabulary_needs_sets():
    model = tiny_models.make("mamba")  # no tokenizer, no recipe, vocab != 256
    assert model.cfg.vocab_size != 256
    with pytest.raises(ValueError, match="model: no tokenizer"):
        ordinal_sets(model)


# ----------------------------------------------------------------------------- errors and Result


def test_bad_input_names_the_argument(planted):
    with pytest.raises(ValueError, match="sets"):
        successor_scores(planted, sets={})
    with pytest.raises(ValueError, match=r"sets\['x'\]"):
        successor_scores(planted, sets={"x": [1]})
    with pytest.raises(ValueError, match=r"sets\['x'\]"):
        successor_scores(planted, sets={"x": [1, None, 3]})
    with pytest.raises(ValueError, match=r"sets\['x'\]"):
        successor_scores(planted, sets={"x": [1, 999]})
    with pytest.raises(ValueError, match=r"sets\['x'\]"):
        successor_scores(planted, sets={"x": "abc"})
    with pytest.raises(ValueError, match="threshold"):
        successor_scores(planted, threshold=2)
    with pytest.raises(ValueError, match="gaps"):
        ordinal_sets(planted, gaps="no")
    with pytest.raises(ValueError, match="model"):
        ordinal_sets(tiny_models.make("attn_only"))  # vocab 97, no tokenizer


def test_result_roundtrip(planted):
    res = successor_scores(planted)
    back = HeadScores.from_json(res.to_json())
    torch.testing.assert_close(back.scores, res.scores)
    torch.testing.assert_close(back.settings["per_set"]["digits"], res.settings["per_set"]["digits"])
    assert back.name == "successor" and back.settings["threshold"] == 0.4


# ----------------------------------------------------------------------------- mod-10 structure


def test_mod_similarity_finds_planted_classes_and_not_random_ones():
    """Rows built as class direction + noise share their class; pure noise does not."""
    from seqlens.circuits.successor import mod_similarity

    g = torch.Generator().manual_seed(0)
    labels = [i % 10 for i in range(40)]
    centres = torch.randn(10, 32, generator=g)
    planted = centres[labels] + 0.5 * torch.randn(40, 32, generator=g)
    hit = mod_similarity(planted, labels, n_perm=200, seed=0)
    assert hit["statistic"] > 0.3 and hit["p_value"] < 0.01
    miss = mod_similarity(torch.randn(40, 32, generator=g), labels, n_perm=200, seed=0)
    assert abs(miss["statistic"]) < 0.1 and miss["p_value"] > 0.05
    with pytest.raises(ValueError, match="^labels"):
        mod_similarity(planted, labels[:-1])
    with pytest.raises(ValueError, match="^labels"):
        mod_similarity(planted[:10], list(range(10)))


def test_head_outputs_are_the_rows_of_head_logits_before_the_unembedding():
    """head_outputs · Nf · W_U reproduces head_logits for every token (the same OV circuit)."""
    from seqlens.circuits.ov import norm_linear
    from seqlens.circuits.successor import head_logits, head_outputs
    from seqlens.circuits.ov import effective_embedding

    model = seqlens.load("successor-transformer")
    ids = torch.tensor([49, 50, 51, 52])
    for layer in range(model.cfg.n_layers):
        x = model.embed.weight.detach()[ids] if layer == 0 else effective_embedding(model, ids)
        ref = head_logits(model, layer, x, ids)[1]
        out = head_outputs(model, layer, 1, ids.tolist()) @ norm_linear(model.ln_final) @ model.unembed.weight.detach()[ids].T
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
