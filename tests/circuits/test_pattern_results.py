"""The Results the dashboard draws: Patterns (one layer's attention on one sequence), ACT
calibration before / after (CalibrationPatterns, CalibrationMetric), and the progress= callbacks of
the long circuit analyses."""

from __future__ import annotations

import pytest
import torch

from seqlens.circuits import (CalibrationMetric, CalibrationPatterns, Patterns, attention_patterns, calibrate_sinks,
                              calibration_metric, calibration_patterns, causal_check, layer_patterns,
                              search_calibration_heads)
from seqlens.circuits.sinks import received_attention
from seqlens.models.hooks import attached_hooks
from seqlens.testing.tiny import make, tokens


@pytest.mark.parametrize("arch, normalisation", [("attn_only", "auto"), ("mamba", "auto"), ("mamba", "none")])
def test_attention_patterns_equal_layer_patterns(arch, normalisation):
    model, x = make(arch), tokens(1, 10)
    for layer in range(2):
        res = attention_patterns(model, x[0].tolist(), layer, normalisation, labels=[f"t{i}" for i in range(10)])
        assert torch.equal(res.patterns, layer_patterns(model, x, normalisation)[layer][0])
        assert res.implicit == (arch == "mamba") and res.signed == (arch == "mamba" and normalisation == "none")
    assert res.head_names() == [f"L1H{h}" for h in range(4)]
    assert res.normalisation == ("none" if arch == "attn_only" or normalisation == "none" else "abs_rows")
    if arch == "attn_only":
        assert torch.allclose(res.patterns.sum(-1), torch.ones(4, 10), atol=1e-5)  # softmax rows


def test_patterns_views():
    model, x = make("attn_only"), tokens(1, 6)
    res = attention_patterns(model, x, 1)  # [1, L] works too; labels default to the ids
    assert res.labels == [str(t) for t in x[0].tolist()]
    df = res.to_frame()
    assert len(df) == 4 * 21 and (df["key"] <= df["query"]).all()  # causal entries of 4 heads
    row = df[(df["head"] == 2) & (df["query"] == 5) & (df["key"] == 3)]
    assert float(row["weight"].iloc[0]) == pytest.approx(float(res.patterns[2, 5, 3]))
    fig = res.figure()
    assert len(fig.data) == 4 and fig.layout.title.text.startswith("Layer 1 attention")
    assert len(res.figure(heads=[3], title="").data) == 1
    back = Patterns.from_json(res.to_json())
    assert torch.equal(back.patterns, res.patterns) and back.labels == res.labels and back.layer == 1


def test_attention_patterns_bad_input():
    model = make("attn_only")
    with pytest.raises(ValueError, match="tokens"):
        attention_patterns(model, tokens(2, 5), 0)
    with pytest.raises(ValueError, match="layer"):
        attention_patterns(model, [1, 2, 3], 7)
    with pytest.raises(ValueError, match="labels"):
        attention_patterns(model, [1, 2, 3], 0, labels=["a"])


def test_calibration_patterns_against_a_direct_reading():
    model, x = make("attn_only"), tokens(1, 12)
    heads = [(1, 2), (0, 1)]
    res = calibration_patterns(model, x[0].tolist(), heads, tau=0.05, beta=0.3)
    assert res.heads == [(0, 1), (1, 2)] and attached_hooks(model) == []
    for i, (l, h) in enumerate(res.heads):  # the plain pattern before; run_with_cache inside calibrate_sinks after
        assert torch.allclose(res.before[i], layer_patterns(model, x)[l][0, h], atol=1e-6)
        name = f"blocks.{l}.mixer.hook_pattern"
        with calibrate_sinks(model, heads, tau=0.05, beta=0.3) as found:
            _, cache = model.run_with_cache(x, names_filter=lambda n: n == name)
        assert torch.equal(res.after[i], cache[name][0, h].float())
        assert res.sinks[i] == found[(l, h)][0].nonzero().flatten().tolist()
        assert torch.equal(res.r_after[i], received_attention(res.after[i]))
    assert torch.allclose(res.after.sum(-1), torch.ones(2, 12), atol=1e-5)  # still distributions
    frame = res.to_frame()
    assert len(frame) == 2 * 12 and set(frame.columns) >= {"r_before", "r_after", "sink"}
    assert "L1H2 after" in {a.text for a in res.figure((1, 2)).layout.annotations}
    fig = res.received_figure((0, 1))
    assert [t.name for t in fig.data] == ["before", "after"] and fig.layout.shapes[0].y0 == 0.05
    with pytest.raises(ValueError, match="head"):
        res.figure((1, 3))
    back = CalibrationPatterns.from_json(res.to_json())
    assert torch.equal(back.after, res.after) and back.heads == res.heads and back.sinks == res.sinks


def test_calibration_with_beta_one_changes_nothing():
    """β = 1 keeps all the sink attention: the calibrated pattern is the original one."""
    model, x = make("attn_only"), tokens(1, 12)
    res = calibration_patterns(model, x, [(0, 0), (1, 3)], tau=0.01, beta=1.0)
    assert torch.allclose(res.after, res.before, atol=1e-6)
    metric = calibration_metric(model, [(0, 0)], tau=0.01, beta=1.0,
                                task=lambda m: float(m(x).detach().float().log_softmax(-1)[0, -1, 0]))
    assert isinstance(metric, CalibrationMetric) and metric.after == pytest.approx(metric.before, abs=1e-6)
    assert list(metric.to_frame()["run"]) == ["before", "after"] and metric.figure().data


def test_calibration_metric_sees_the_calibration():
    model, x = make("attn_only"), tokens(2, 12)
    fn = lambda m: float(m(x).detach().float().log_softmax(-1)[:, -1].max(-1).values.mean())  # noqa: E731
    res = calibration_metric(model, [(1, 0), (1, 1)], tau=0.02, beta=0.0, task=fn)
    with calibrate_sinks(model, [(1, 0), (1, 1)], tau=0.02, beta=0.0):
        expected = fn(model)
    assert res.before == fn(model) and res.after == expected and res.heads == [(1, 0), (1, 1)]
    assert res.improvement == pytest.approx(res.after - res.before)
    assert attached_hooks(model) == []


def test_causal_check_and_head_search_report_progress_to_a_callback():
    model, x = make("attn_only"), tokens(2, 12)
    fn = lambda m: float(m(x).detach().float().log_softmax(-1)[:, -1, 0].mean())  # noqa: E731
    calls: list = []
    causal_check(model, [(0, 0)], task=fn, n_random=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(6)]  # start, then baseline, targets, 3 random draws
    calls.clear()
    search_calibration_heads(model, task=fn, exclude_layers=(), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 8) for i in range(9)]  # one step per searched head
    with pytest.raises(ValueError, match="progress"):
        causal_check(model, [(0, 0)], task=fn, n_random=0, progress="yes")
