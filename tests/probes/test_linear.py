"""Linear probes: planted features are recovered, random labels give chance, the control task
(Hewitt & Liang) separates reading a feature from memorising token identity, splits are by
sequence, bad input names the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from seqlens.testing.tiny import make, tokens

from seqlens.probes.linear import (
    ProbeResult,
    control_task,
    fit_probe,
    fit_probe_arrays,
    normalise_positions,
    split_by_group,
)


def planted(n_seq: int = 200, per_seq: int = 8, n_classes: int = 4, dim: int = 32, noise: float = 0.3, seed: int = 0):
    """Activations = a fixed random projection of one-hot labels + noise; token ids independent
    of the labels; one group per sequence."""
    rng = np.random.default_rng(seed)
    n = n_seq * per_seq
    y = rng.integers(0, n_classes, n)
    W = rng.normal(size=(n_classes, dim))
    X = W[y] + noise * rng.normal(size=(n, dim))
    ident = rng.integers(0, 50, n)
    groups = np.repeat(np.arange(n_seq), per_seq)
    return X, y, ident, groups


def test_planted_feature_recovered_control_at_chance():
    X, y, ident, groups = planted()
    res = fit_probe_arrays(X, y, groups, control_labels=control_task(ident, y, seed=0))
    assert res.task == "classification" and res.metric == "accuracy" and res.n_classes == 4
    assert res.test_score >= 0.98 and res.train_score >= 0.98
    # X carries nothing about the token identity, so the control task is at chance
    assert res.control_test_score <= 0.4
    assert res.selectivity >= 0.6
    assert res.chance < 0.4


def test_random_labels_give_chance():
    X, _, _, groups = planted()
    y = np.random.default_rng(1).integers(0, 4, len(X))
    res = fit_probe_arrays(X, y, groups)
    assert abs(res.test_score - 0.25) < 0.06
    assert res.control_test_score is None and res.selectivity is None


def test_regression_recovers_linear_target():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 10))
    y = X @ rng.normal(size=10) + 0.05 * rng.normal(size=600)
    res = fit_probe_arrays(X, y, np.repeat(np.arange(100), 6))
    assert res.task == "regression" and res.metric == "r2" and res.n_classes is None
    assert res.test_score > 0.99
    assert res.chance <= 0.0 + 1e-9  # the training mean has R² ≤ 0 on the test split


def test_split_is_by_sequence_and_seeded():
    groups = np.repeat(np.arange(40), 5)
    train, test = split_by_group(len(groups), groups, 0.25, seed=3)
    assert not set(groups[train]) & set(groups[test])
    assert len(set(groups[test])) == 10
    again = split_by_group(len(groups), groups, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    X, y, _, g = planted(n_seq=60)
    a, b = fit_probe_arrays(X, y, g, seed=5), fit_probe_arrays(X, y, g, seed=5)
    assert a.test_score == b.test_score and a.n_test == b.n_test


def test_control_task_is_a_consistent_function_of_identity():
    ident = np.array([3, 1, 3, 2, 1, 3])
    labels = np.array([0, 1, 2, 0, 1, 2])
    ctrl = control_task(ident, labels, seed=0)
    for t in np.unique(ident):
        assert len(set(ctrl[ident == t])) == 1
    assert set(ctrl) <= set(labels)
    assert np.array_equal(ctrl, control_task(ident, labels, seed=0))


def test_fit_probe_on_model_hooks():
    model = make("mamba")
    toks = tokens(24, 12)
    labels = toks % 2  # per token: a function of the current token's identity
    res = fit_probe(model, "hook_embed", toks, labels)
    assert isinstance(res, ProbeResult)
    assert res.n_train + res.n_test == 24 * 12 and res.n_features == 32
    assert res.settings["hook"] == "hook_embed" and res.settings["positions"] == list(range(12))
    # parity is a function of the token: the control task (another function of it) is learnable
    # about as well, so selectivity is near 0 — exactly what the control task guards against
    assert res.train_score > 0.75 and res.control_train_score > 0.75
    assert abs(res.selectivity) < 0.25
    # recurrent state at chosen positions (tap_states), per-sequence labels
    seq_labels = torch.arange(24) % 3
    res = fit_probe(model, "blocks.1.mixer.hook_state", toks, seq_labels, positions=[-1, 5], control=False)
    assert res.settings["positions"] == [5, 11] and res.n_features == 64 * 8
    assert res.n_train + res.n_test == 48
    # ignore_index drops positions
    masked = labels.clone()
    masked[:, :6] = -100
    res = fit_probe(model, "blocks.0.hook_resid_post", toks, masked, control=False)
    assert res.n_train + res.n_test == 24 * 6


def test_result_views_and_json():
    X, y, ident, groups = planted(n_seq=40)
    res = fit_probe_arrays(X, y, groups, control_labels=control_task(ident, y))
    df = res.to_frame()
    assert list(df.columns) == ["labels", "split", "metric", "score"] and len(df) == 4
    assert res.figure().data
    back = ProbeResult.from_json(res.to_json())
    assert back.estimator is None and back.test_score == res.test_score and back.settings == res.settings
    assert res.estimator.predict(X[:3]).shape == (3,)


def test_bad_input_names_the_argument():
    model = make("mamba")
    toks = tokens(4, 8)
    with pytest.raises(ValueError, match="hook"):
        fit_probe(model, "blocks.9.hook_resid_post", toks, toks)
    with pytest.raises(ValueError, match="labels"):
        fit_probe(model, "hook_embed", toks, toks[:, :3])
    with pytest.raises(ValueError, match="positions"):
        fit_probe(model, "hook_embed", toks, toks, positions=[8])
    with pytest.raises(ValueError, match="positions"):
        normalise_positions([], 4)
    X, y, _, groups = planted(n_seq=10)
    with pytest.raises(ValueError, match="test_size"):
        fit_probe_arrays(X, y, groups, test_size=1.5)
    with pytest.raises(ValueError, match="C"):
        fit_probe_arrays(X, y, groups, C=0)
    with pytest.raises(ValueError, match="X"):
        fit_probe_arrays(X[:, 0], y)
    with pytest.raises(ValueError, match="y"):
        fit_probe_arrays(X, y[:-1])
    with pytest.raises(ValueError, match="groups"):
        fit_probe_arrays(X, y, np.zeros(len(y)))
    with pytest.raises(ValueError, match="task"):
        fit_probe_arrays(X, y, task="clustering")
    with pytest.raises(ValueError, match="control_labels"):
        fit_probe_arrays(X, y, control_labels=y[:-1])
