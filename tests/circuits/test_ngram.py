"""n-gram heads (docs/methods.md §1, Akyürek et al. 2024): the template against brute force, planted
ground truth, the default DFA data, every architecture."""

from __future__ import annotations

import pytest
import torch

from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted import PLANTED, planted_model
from seqlens.circuits.ngram import dfa_tokens, ngram_labels, ngram_scores, ngram_template
from seqlens.circuits.token_heads import prefix_score


def brute_force(tokens: torch.Tensor, n: int) -> torch.Tensor:
    B, L = tokens.shape
    out = torch.zeros(B, L, L)
    for b in range(B):
        for i in range(L):
            for j in range(i):
                ok = all(j - 1 - k >= 0 and i - k >= 0 and tokens[b, j - 1 - k] == tokens[b, i - k]
                         for k in range(n))
                out[b, i, j] = float(ok)
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_template_equals_brute_force(n):
    tokens = torch.randint(0, 3, (2, 17), generator=torch.Generator().manual_seed(n))
    assert torch.equal(ngram_template(tokens, n), brute_force(tokens, n))


def test_pure_ngram_pattern_scores_one_on_its_n_and_gets_its_label():
    # a pattern spreading each row uniformly over its 2-gram matches: score 1 for n = 2 only
    tokens = torch.randint(0, 3, (4, 40), generator=torch.Generator().manual_seed(0))
    M = {n: ngram_template(tokens, n) for n in (1, 2, 3)}
    rows = M[2] / M[2].sum(-1, keepdim=True).clamp_min(1)
    rows[M[2].sum(-1) == 0, 0] = 1.0  # rows without a match attend to position 0
    pattern = rows[:, None]  # [B, 1, L, L]
    scores = {n: prefix_score(pattern, M[n]).item() for n in (1, 2, 3)}
    assert scores[2] == pytest.approx(1.0)
    assert scores[1] < 0.9 and scores[3] < 0.9, scores
    assert max(scores, key=scores.get) == 2


def test_planted_induction_head_is_the_top_unigram_head():
    model = planted_model()
    res = ngram_scores(model, n=1, tokens=torch.randint(0, 16, (4, 32), generator=torch.Generator().manual_seed(1)))
    (best, s1), (_, s2) = res.top(2)
    assert best == PLANTED["induction"] and s1 - s2 > 0.4, res.scores
    assert res.name == "ngram1" and res.settings["n"] == 1


def test_default_dfa_data_has_full_rows_in_the_model_vocabulary():
    import seqlens

    byte_model = seqlens.load("text-mamba")
    data, info = dfa_tokens(byte_model, seq_len=64, batch=3, seed=0)
    assert data.shape == (3, 64) and info["bos"] is None
    assert set(data.unique().tolist()) <= set(range(ord("a"), ord("a") + 18)) | {ord(" ")}
    icll = seqlens.load("icll-transformer")
    data, _ = dfa_tokens(icll, seq_len=64, batch=3, seed=0)
    assert int(data.max()) <= 18  # symbols and separator, never the pad 19
    torch.testing.assert_close(dfa_tokens(icll, 64, 3, 0)[0], data)  # seeded


def test_labels_and_every_architecture():
    for arch in tiny_models.CONFIGS:
        model = tiny_models.make(arch)
        labels, scores = ngram_labels(model, seq_len=24, batch=2)
        assert labels.shape == (model.cfg.n_layers, 4) and set(labels.unique().tolist()) <= {1, 2, 3}
        assert all(torch.isfinite(s.scores).all() for s in scores), arch


def test_errors_name_the_argument():
    model = planted_model()
    with pytest.raises(ValueError, match="n:"):
        ngram_scores(model, n=0)
    with pytest.raises(ValueError, match="seq_len"):
        ngram_scores(model, seq_len=2)
