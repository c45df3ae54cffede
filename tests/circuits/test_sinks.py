"""Attention sinks and ACT calibration (docs/methods.md §4): planted ground truth, the stats route
against the pattern route, calibration invariants, the head search, every architecture, a zoo
organism, the Result API and bad input."""

from __future__ import annotations

import pytest
import torch

from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted_sinks import (DELIM_POS, KEY_POS, PLANTED, T, V, planted_sink_model, planted_tokens,
                           task_loss)
from seqlens.circuits.sinks import (CalibrationSearch, SinkScores, calibrate_pattern, calibrate_sinks,
                                    received_attention, search_calibration_heads, sink_mask, sink_scores)

BETA, TAU = 0.4, 0.1


@pytest.fixture(scope="module")
def planted():
    return planted_sink_model()


@pytest.fixture(scope="module")
def toks():
    return planted_tokens(batch=4)


@pytest.fixture(scope="module")
def scores(planted, toks):
    return sink_scores(planted, tokens=toks, k=4, tau=TAU)


def _patterns(model, toks):
    """Every layer's pattern ``[B, H, T, T]`` as the model's hooked forward sees it."""
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    return [cache[f"blocks.{l}.mixer.hook_pattern"].float() for l in range(model.cfg.n_layers)]


def _no_hooks(model) -> bool:
    return all(not hp._forward_hooks for hp in model.hook_dict.values())


# ----------------------------------------------------------------------------- planted ground truth


def test_planted_sink_head_ranks_first_by_a_margin(scores):
    (best, s1), (_, s2) = scores.top(2)
    assert best == PLANTED["sink"], scores.scores
    assert s1 > 0.95 and s1 - s2 > 0.8, scores.scores
    assert scores.first_k_mass[PLANTED["sink"]] > 0.95


def test_planted_hidden_sinks_are_exactly_the_special_positions(scores):
    got = {name: scores.hidden_sinks[l][h] for name, (l, h) in PLANTED.items()}
    assert got == {"sink": [], "ordinary": [], "hidden": [DELIM_POS], "key": [KEY_POS]}


def test_min_queries_drops_the_tail_of_local_heads():
    cfg = tiny_models.CONFIGS["attn_only"].replace(n_layers=1, n_heads=1)
    from seqlens.models import build
    model = build(cfg, seed=0).eval()
    with torch.no_grad():  # a current-token head: q·k_j ∝ x_i·x_j, largest for j = i
        model.blocks[0].mixer.q.weight.copy_(torch.eye(32) * 3)
        model.blocks[0].mixer.k.weight.copy_(torch.eye(32) * 3)
    toks = tiny_models.tokens(4, 20)
    assert model.mixer_pattern(toks, 0).diagonal(dim1=-2, dim2=-1).mean() > 0.9
    res = sink_scores(model, tokens=toks, k=2)
    r = res.received[0, 0]
    assert res.hidden_sinks[0][0] == [j for j in range(1, 20) if r[j] > TAU]  # ACT's rule, tail included
    assert 19 in res.hidden_sinks[0][0]
    trimmed = sink_scores(model, tokens=toks, k=2, min_queries=5).hidden_sinks[0][0]
    assert trimmed == [j for j in res.hidden_sinks[0][0] if j <= 15]
    with pytest.raises(ValueError, match="min_queries"):
        sink_scores(model, tokens=toks, min_queries=0)


def test_received_matches_a_direct_computation(planted, toks, scores):
    for layer, p in enumerate(_patterns(planted, toks)):
        B, H = p.shape[:2]
        direct = torch.zeros(H, T)
        for j in range(T):  # r(j) = (1/(T−j)) Σ_{i≥j} A[i, j], averaged over the batch
            direct[:, j] = p[:, :, j:, j].sum((0, 2)) / ((T - j) * B)
        torch.testing.assert_close(scores.received[layer], direct, atol=1e-6, rtol=0)
    assert scores.received.shape == (2, 2, T)


def test_received_attention_and_sink_mask_on_a_toy_pattern():
    A = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.6, 0.2]])
    r = received_attention(A)
    torch.testing.assert_close(r, torch.tensor([1.7 / 3, 1.1 / 2, 0.2]))
    assert sink_mask(r, 0.3).tolist() == [False, True, False]  # j = 0 is never in S


# ----------------------------------------------------------------------------- stats vs pattern


@pytest.mark.parametrize("name", ["planted", "gpt2", "llama", "fox"])
@pytest.mark.parametrize("backend", ["auto", "ref"])
def test_stats_route_equals_pattern_route(name, backend):
    model = planted_sink_model() if name == "planted" else tiny_models.make(name).eval()
    toks = planted_tokens(3) if name == "planted" else tiny_models.tokens(3, 20)
    stats = sink_scores(model, tokens=toks, k=3, backend=backend, received=False)
    pattern = sink_scores(model, tokens=toks, k=3, backend="pattern")
    assert stats.settings["backend"] == ("chunked" if backend == "auto" else "ref")  # CPU
    assert pattern.settings["backend"] == "pattern"
    torch.testing.assert_close(stats.scores, pattern.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.first_k_mass, pattern.first_k_mass, atol=1e-5, rtol=0)
    assert stats.received is None and stats.hidden_sinks is None


# ----------------------------------------------------------------------------- calibration


def _loop_reference(A: torch.Tensor, S: list[int], beta: float, feed_first: bool) -> torch.Tensor:
    """ACT's rule row by row: scale the sink columns by β, hand the freed mass to the other
    columns in proportion to their attention (column 0 only when ``feed_first``)."""
    out = A.clone()
    for i in range(A.shape[0]):
        pool = [j for j in range(i + 1) if j not in S and (feed_first or j > 0)]
        denom = sum(float(A[i, j]) for j in pool)
        if denom == 0:
            continue
        freed = (1 - beta) * sum(float(A[i, j]) for j in S)
        for j in S:
            out[i, j] = beta * A[i, j]
        for j in pool:
            out[i, j] = A[i, j] + freed * A[i, j] / denom
    return out


@pytest.mark.parametrize("feed_first", [True, False])
def test_calibrate_pattern_matches_a_loop_reference(feed_first):
    g = torch.Generator().manual_seed(0)
    A = torch.rand(6, 9, 9, generator=g).tril() ** 3
    A = A / A.sum(-1, keepdim=True)
    sinks = sink_mask(received_attention(A), TAU)
    out = calibrate_pattern(A, sinks, BETA, feed_first)
    for n in range(A.shape[0]):
        S = sinks[n].nonzero().flatten().tolist()
        torch.testing.assert_close(out[n], _loop_reference(A[n], S, BETA, feed_first), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(6, 9), atol=1e-6, rtol=0)
    assert bool(sinks.any()) and torch.equal(out.triu(1), torch.zeros_like(out).triu(1))


@pytest.mark.parametrize("feed_first", [True, False])
def test_calibrating_the_hidden_sink_head(planted, toks, feed_first):
    before = _patterns(planted, toks)
    with calibrate_sinks(planted, [PLANTED["hidden"]], TAU, BETA, feed_first=feed_first) as found:
        after = _patterns(planted, toks)
    l, h = PLANTED["hidden"]
    assert found[(l, h)].tolist() == [[j == DELIM_POS for j in range(T)]] * toks.shape[0]
    A, A2 = before[l][:, h], after[l][:, h]
    torch.testing.assert_close(A2[..., DELIM_POS], BETA * A[..., DELIM_POS], atol=1e-7, rtol=0)
    torch.testing.assert_close(A2.sum(-1), torch.ones(A2.shape[:2]), atol=1e-6, rtol=0)
    rows = slice(DELIM_POS, None)  # queries that see the sink
    if feed_first:  # ACT's code: the kept first token takes its proportional share
        share = (A2[:, rows, 1] / A[:, rows, 1])  # token 1 is an ordinary column
        torch.testing.assert_close(A2[:, rows, 0], A[:, rows, 0] * share, atol=1e-7, rtol=1e-5)
        assert bool((share > 1.5).all())
    else:
        assert torch.equal(A2[..., 0], A[..., 0])
    for layer in range(2):  # every other head is untouched, bit for bit
        others = [k for k in range(2) if (layer, k) != (l, h)]
        assert torch.equal(after[layer][:, others], before[layer][:, others])
    assert _no_hooks(planted)


def test_calibration_helps_the_planted_task_and_hooks_go_away(planted, toks):
    loss = task_loss()
    base_logits, base = planted(toks), loss(planted)
    with calibrate_sinks(planted, [PLANTED["hidden"]]):
        assert loss(planted) < base - 0.3
    assert torch.equal(planted(toks), base_logits) and _no_hooks(planted)
    with pytest.raises(RuntimeError, match="boom"):
        with calibrate_sinks(planted, [PLANTED["hidden"], PLANTED["key"]]):
            raise RuntimeError("boom")
    assert _no_hooks(planted)


def test_calibration_of_a_head_without_hidden_sinks_changes_nothing(planted, toks):
    before = _patterns(planted, toks)
    with calibrate_sinks(planted, [PLANTED["sink"], PLANTED["ordinary"]]) as found:
        after = _patterns(planted, toks)
    assert not any(bool(m.any()) for m in found.values())
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_calibrate_sinks_rejects_recurrent_models_and_bad_heads(planted):
    with pytest.raises(NotImplementedError, match="softmax"):
        with calibrate_sinks(tiny_models.make("mamba"), [(0, 0)]):
            pass
    for bad in [(0, 1), [(2, 0)], [(0, 5)], ["ab"], [(0.5, 1)], None]:
        with pytest.raises(ValueError, match="heads"):
            with calibrate_sinks(planted, bad):
                pass
    for kw in ({"tau": -0.1}, {"beta": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            with calibrate_sinks(planted, [(0, 0)], **kw):
                pass
    assert _no_hooks(planted)


# ----------------------------------------------------------------------------- head search


def test_search_keeps_the_heads_that_help(planted):
    res = search_calibration_heads(planted, task_loss(), exclude_layers=(), progress=False)
    assert res.kept == [PLANTED["hidden"]]
    assert not res.higher_is_better and res.settings["task"] == "planted:key_loss"
    # heads without hidden sinks give bit-identical metrics (explicit path throughout)
    assert res.metric[PLANTED["sink"]] == res.baseline and res.metric[PLANTED["ordinary"]] == res.baseline
    assert res.improvement[PLANTED["key"]] < -1 and res.improvement[PLANTED["hidden"]] > 0.3
    assert res.combined == pytest.approx(float(res.metric[PLANTED["hidden"]]), abs=1e-6)
    assert _no_hooks(planted)


def test_search_with_a_callable_and_excluded_layers(planted):
    loss = task_loss()
    res = search_calibration_heads(planted, lambda m: -loss(m), exclude_layers=[0], progress=False)
    assert res.higher_is_better and res.kept == [PLANTED["hidden"]]
    assert bool(res.metric[0].isnan().all()) and not bool(res.metric[1].isnan().any())
    assert res.settings["searched_layers"] == [1]


def test_search_act_layer_exclusion():
    with pytest.raises(ValueError, match=r"exclude_layers=\(\)"):
        search_calibration_heads(planted_sink_model(), task_loss(), progress=False)
    cfg = tiny_models.CONFIGS["attn_only"].replace(n_layers=4)
    from seqlens.models import build
    model = build(cfg, seed=0).eval()
    toks = tiny_models.tokens(2, 16)
    res = search_calibration_heads(model, lambda m: float(m(toks)[..., 0].mean()), progress=False)
    assert res.settings["searched_layers"] == [2]
    assert bool(res.metric[[0, 1, 3]].isnan().all()) and bool(res.metric[2].isfinite().all())
    for bad in ([7], "all", 3):
        with pytest.raises(ValueError, match="exclude_layers"):
            search_calibration_heads(model, lambda m: 0.0, exclude_layers=bad, progress=False)
    with pytest.raises(NotImplementedError):
        search_calibration_heads(tiny_models.make("gla"), lambda m: 0.0, exclude_layers=(), progress=False)


# ----------------------------------------------------------------------------- architectures, zoo


@pytest.mark.parametrize("name", list(tiny_models.CONFIGS))
def test_every_architecture_gives_finite_scores(name):
    model = tiny_models.make(name).eval()
    res = sink_scores(model, seq_len=12, batch=2, k=2)
    L = model.cfg.n_layers
    assert res.scores.shape[0] == L and res.received.shape == (*res.scores.shape, 12)
    for t in (res.scores, res.first_k_mass, res.received):
        assert bool(torch.isfinite(t).all())
    assert bool(((res.scores >= 0) & (res.scores <= 1 + 1e-5)).all())
    recurrent = model.cfg.is_recurrent
    assert res.settings["normalisation"] == ("abs_rows" if recurrent else "none")
    assert res.settings["backend"] == ("pattern" if recurrent else "chunked")
    assert res.settings["data"] == "uniform_random_tokens"


def test_zoo_organism_uses_its_recipe_data():
    import seqlens

    from seqlens.models.train import get_batch

    model = seqlens.load("induction-attn2")
    res = sink_scores(model, batch=4)
    eval_len = get_batch(model.recipe, 0, split="eval").tokens.shape[1]
    assert res.settings["data"] == "recipe:induction-attn2:eval" and res.settings["seq_len"] == eval_len
    assert res.settings["batch"] == 4 and res.received.shape[-1] == eval_len
    assert bool(torch.isfinite(res.scores).all()) and bool(torch.isfinite(res.received).all())
    print("\ninduction-attn2 top sink heads:", [(lh, round(s, 4)) for lh, s in res.top(4)],
          "\nfirst-4 mass:", res.first_k_mass.numpy().round(3).tolist(), "\nhidden sinks:", res.hidden_sinks)


def test_prompts_of_different_lengths(planted):
    class Bytes:  # a stand-in tokenizer: bytes mod V
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [b % V for b in text.encode()]}

    planted.tokenizer = Bytes()
    try:
        res = sink_scores(planted, prompts=["a short prompt", "a much longer prompt than that"], k=2)
    finally:
        planted.tokenizer = None
    assert res.received.shape[-1] == 30 and bool(torch.isfinite(res.received).all())
    assert res.settings["data"] == "prompts"


# ----------------------------------------------------------------------------- Result API


def test_sink_scores_result_api(scores, toks, planted):
    df = scores.to_frame()
    assert list(df.columns) == ["layer", "head", "score", "first_k_mass", "hidden_sinks"] and len(df) == 4
    assert df.loc[(df["layer"] == 1) & (df["head"] == 0), "hidden_sinks"].item() == [DELIM_POS]
    assert len(scores.received_frame()) == 4 * T
    back = SinkScores.from_json(scores.to_json())
    assert torch.equal(back.scores, scores.scores) and torch.equal(back.received, scores.received)
    assert back.hidden_sinks == scores.hidden_sinks and back.settings == scores.settings
    fig = scores.figure()
    assert "hidden sinks [12]" in fig.data[0].text[1][0]
    assert len(scores.received_figure(1, 0).data) == 2
    with pytest.raises(ValueError, match="head"):
        scores.received_figure(1, 5)
    lean = sink_scores(planted, tokens=toks, received=False)
    assert torch.equal(lean.scores, scores.scores)
    assert SinkScores.from_json(lean.to_json()).received is None
    with pytest.raises(ValueError, match="received"):
        lean.received_figure(0, 0)


def test_calibration_search_result_api(planted):
    res = search_calibration_heads(planted, task_loss(), exclude_layers=[0], progress=False)
    df = res.to_frame()
    assert df["kept"].sum() == 1 and df["excluded"].sum() == 2
    back = CalibrationSearch.from_json(res.to_json())
    assert back.kept == res.kept and back.baseline == res.baseline and back.combined == res.combined
    assert torch.equal(back.metric.isnan(), res.metric.isnan())
    assert len(res.figure().data) == 2


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,arg", [
    ({"k": 0}, "k"), ({"k": T}, "k"), ({"k": 2.0}, "k"), ({"tau": 2}, "tau"), ({"backend": "cuda"}, "backend"),
    ({"tokens": torch.zeros(5, dtype=torch.long)}, "tokens"), ({"batch": 0}, "batch"), ({"seq_len": 1}, "seq_len"),
    ({"tokens": torch.zeros(1, 8, dtype=torch.long), "prompts": "x"}, "tokens, prompts"),
    ({"prompts": "x"}, "prompts"),
])
def test_bad_input_names_the_argument(planted, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        sink_scores(planted, **kwargs)


def test_recurrent_models_reject_stats_backends():
    with pytest.raises(ValueError, match="backend"):
        sink_scores(tiny_models.make("mamba"), seq_len=8, batch=1, backend="chunked")
