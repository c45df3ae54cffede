"""``progress=`` of the long probes (seqlens.progress): True / False keep tqdm, a callable
``(done, total)`` gets every step, anything else is refused with the argument's name."""

from __future__ import annotations

import pytest

from seqlens.probes.capacity import lag_decoding, passkey_sweep
from seqlens.probes.collapse import state_collapse
from seqlens.progress import CallbackBar, progress_bar
from seqlens.testing.tiny import make


def recorder():
    calls: list = []
    return calls, lambda done, total: calls.append((done, total))


def test_progress_bar_kinds():
    calls, fn = recorder()
    assert list(progress_bar(fn, ["a", "b", "c"])) == ["a", "b", "c"]
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    bar = progress_bar(fn, total=10)
    bar.update(4)
    assert isinstance(bar, CallbackBar) and bar.n == 4 and calls[-1] == (4, 10)
    assert progress_bar(False, [1]).disable and list(progress_bar(None, [1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="progress"):
        progress_bar("yes", [1])


def test_state_collapse_reports_every_streamed_token():
    calls, fn = recorder()
    model = make("mamba")
    quiet = state_collapse(model, "newlines", n_tokens=256, chunk=64, train_len=32, progress=False)
    res = state_collapse(model, "newlines", n_tokens=256, chunk=64, train_len=32, progress=fn)
    done = [d for d, _ in calls]
    assert {t for _, t in calls} == {256} and done[0] == 0 and done[-1] == 256  # every token, once
    assert len(done) >= 5 and all(a < b for a, b in zip(done, done[1:]))  # at least one step per chunk
    assert res.loss_in == quiet.loss_in and (res.rms == quiet.rms).all()  # the numbers do not depend on it


def test_lag_decoding_reports_every_probe():
    calls, fn = recorder()
    lag_decoding(make("mingru"), lags=[0, 1, 2], n_seqs=40, seq_len=12, n_positions=3, progress=fn)
    assert calls == [(i, 6) for i in range(7)]  # 2 layers × 3 lags


def test_passkey_sweep_reports_every_batch():
    from seqlens.models import ModelConfig, build

    calls, fn = recorder()
    model = build(ModelConfig(arch="mamba", vocab_size=256, d_model=16, n_layers=1, d_state=4), seed=0)
    passkey_sweep(model, [48, 64], [0.5], n_trials=3, batch_size=2, progress=fn)
    assert calls == [(i, 4) for i in range(5)]  # per length: 3 prompts in batches of 2
