"""Capacity: lag decoding recovers a planted shift register's span; passkey sweeps reproduce the
passkey organism's recorded accuracy; capacity fits recover known laws; bad input names the
argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from seqlens.testing.tiny import CONFIGS, RECURRENT, make

from seqlens.models import ModelConfig, zoo
from seqlens.models.base import Mixer, SeqModel
from seqlens.probes.capacity import (
    CapacityFit,
    LagCurve,
    PasskeySweep,
    capacity_fit,
    lag_curves_figure,
    lag_decoding,
    longest_perfect,
    passkey_sweep,
)

# ----------------------------------------------------------------------------- planted shift register

V, M = 24, 4  # vocabulary (= d_model, one-hot embeddings), register length


class ShiftRegisterMixer(Mixer):
    """A linear recurrence ``h_t = S h_{t−1} + E x_t`` whose transition S shifts the m slots by one
    and E writes the input into slot 0: the state holds exactly the last m inputs,
    ``h_t[j] = x_{t−j}`` (j < m). Outputs nothing (the residual stream keeps the embedding)."""

    supports_state_taps = True
    state_key = "reg"

    def __init__(self, d: int, m: int):
        super().__init__()
        self.d, self.m = d, m
        from transformer_lens.hook_points import HookPoint

        self.hook_state = HookPoint()

    def init_state(self, batch, device, dtype):
        return {"reg": torch.zeros(batch, self.m, self.d, device=device, dtype=dtype)}

    def forward(self, x, state=None, pos=0):
        self.check_tap_range(x.shape[1], state)
        B, T, _ = x.shape
        prev = x.new_zeros(B, self.m, self.d) if state is None else state["reg"]
        hist = torch.cat([prev.flip(1), x], dim=1)  # hist[:, m + t] = x_t, earlier inputs before
        reg = torch.stack([hist[:, self.m - j:self.m - j + T] for j in range(self.m)], dim=2)  # [B, T, m, d]
        taps = self.local_taps(pos, T)
        if taps is not None:
            self.hook_state(reg[:, taps])
        return self.hook_out(torch.zeros_like(x)), None if state is None else {"reg": reg[:, -1]}


class ShiftRegisterModel(SeqModel):
    has_mlp = False

    def make_mixer(self, layer):
        return ShiftRegisterMixer(self.cfg.d_model, M)


def shift_register_model() -> SeqModel:
    cfg = ModelConfig(arch="mingru", vocab_size=V, d_model=V, n_layers=1, norm="rmsnorm", d_hidden=V)
    model = ShiftRegisterModel(cfg).eval()
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(V))
    return model


def test_shift_register_state_is_the_last_m_tokens():
    model = shift_register_model()
    toks = torch.randint(1, 17, (2, 10), generator=torch.Generator().manual_seed(0))
    grabbed = {}
    with model.tap_states([6]), model.hooks(fwd_hooks=[("blocks.0.mixer.hook_state",
                                                         lambda x, hook: grabbed.setdefault("s", x))]):
        model(toks)
    reg = grabbed["s"][:, 0]  # [B, m, d]
    for j in range(M):
        assert torch.equal(reg[:, j].argmax(-1), toks[:, 6 - j])


def test_lag_decoding_recovers_planted_span():
    model = shift_register_model()
    curve = lag_decoding(model, lags=range(0, 8), n_seqs=160, seq_len=32, n_positions=8, progress=False)
    assert curve.source == "state" and curve.n_classes == 16 and curve.layers == [0]
    acc = curve.accuracy[0]
    chance = torch.tensor(curve.chance)
    assert (acc[:M] >= 0.95).all(), acc
    assert (acc[M:] <= chance[M:] + 0.06).all(), (acc, chance)
    assert all(abs(c - 1 / 16) < 0.04 for c in curve.chance)
    assert curve.span(0.95) == M - 1
    back = LagCurve.from_json(curve.to_json())
    assert torch.equal(back.accuracy, curve.accuracy) and back.lags == curve.lags
    df = curve.to_frame()
    assert list(df.columns) == ["layer", "lag", "accuracy", "train_accuracy", "chance"] and len(df) == 8
    assert curve.figure().data and lag_curves_figure({"register": curve}).data


@pytest.mark.parametrize("name", RECURRENT)
def test_lag_decoding_runs_on_every_recurrent_arch(name):
    model = make(name)
    # 8 symbols, 64 state features, 100 L-BFGS steps: ~2x cheaper than the defaults, and the
    # current token still decodes far above chance on every architecture (margin >= 0.45 measured)
    curve = lag_decoding(model, lags=[0, 1, 3], n_seqs=120, seq_len=16, n_positions=4, symbols=8,
                         max_features=64, max_iter=100, progress=False)
    assert curve.source == "state" and curve.layers == list(range(CONFIGS[name].n_layers))
    assert curve.n_classes == 8
    assert curve.accuracy.shape == (CONFIGS[name].n_layers, 3)
    assert ((curve.accuracy >= 0) & (curve.accuracy <= 1)).all()
    assert curve.best[0] > curve.chance[0] + 0.15  # the current token is in the state (random weights)


def test_lag_decoding_attention_uses_residual_stream():
    model = make("gpt2")
    curve = lag_decoding(model, layer=1, lags=[0, 2], n_seqs=48, seq_len=16, n_positions=4, progress=False)
    assert curve.source == "resid" and curve.settings["hooks"] == ["blocks.1.hook_resid_post"]
    assert curve.accuracy[0, 0] > 0.5
    with pytest.raises(ValueError, match="source"):
        lag_decoding(model, source="state", progress=False)


def test_lag_decoding_bad_input():
    model = make("mamba")
    for kwargs, arg in [({"lags": [-1]}, "lags"), ({"lags": []}, "lags"), ({"layer": 5}, "layer"),
                        ({"symbols": 200}, "symbols"), ({"symbols": [1]}, "symbols"),
                        ({"seq_len": 4, "lags": [0, 8]}, "seq_len"), ({"n_seqs": 1}, "n_seqs"),
                        ({"source": "kv"}, "source"), ({"test_size": 0}, "test_size"),
                        ({"max_features": 0}, "max_features"), ({"tokens": torch.zeros(2, 3, dtype=torch.long),
                                                                 "lags": [0, 5]}, "tokens")]:
        with pytest.raises(ValueError, match=arg):
            lag_decoding(model, progress=False, **kwargs)


def test_lag_decoding_wide_state_is_reduced():
    model = make("mamba")
    curve = lag_decoding(model, layer=0, lags=[0], n_seqs=40, seq_len=12, n_positions=4, max_features=16,
                         progress=False)
    assert curve.settings["n_features"] == {"blocks.0.mixer.hook_state": 64 * 8}
    assert curve.settings["n_components"] == {"blocks.0.mixer.hook_state": 16}


# ----------------------------------------------------------------------------- passkey sweep


def synthetic_sweep(name: str, n_s: float, perfect_up_to: float, lengths=(64, 128, 192, 256, 320, 512, 1024)):
    """Accuracy 1 at every depth up to ``perfect_up_to``, 0 beyond."""
    acc = torch.tensor([[1.0 if L <= perfect_up_to else 0.0] * 3 for L in lengths])
    return PasskeySweep(lengths=list(lengths), depths=[0.0, 0.5, 1.0], accuracy=acc, exact=acc, digits=acc, recall=acc,
                        n_trials=4, longest_perfect=longest_perfect(lengths, acc),
                        settings={"model": name, "state_size": {"d_state": n_s, "elements": 96 * n_s}})


@pytest.mark.slow
def test_passkey_sweep_reproduces_recorded_accuracy():
    model = zoo.load("passkey-mamba-n4")
    recorded = zoo.record("passkey-mamba-n4")["metrics"]  # accuracy 1.0 @64, accuracy_4x 0.994 @256
    sweep = passkey_sweep(model, [256, 64], n_trials=4, seed=0, progress=False)
    assert sweep.lengths == [64, 256] and sweep.depths == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sweep.settings["state_size"] == {"d_state": 4, "elements": 3 * 128 * 4}
    assert sweep.settings["kind"] == "bytes" and sweep.settings["trained_length"] == 64
    assert float(sweep.digits[0].mean()) == pytest.approx(recorded["accuracy"], abs=0.02)
    assert float(sweep.digits[1].mean()) == pytest.approx(recorded["accuracy_4x"], abs=0.1)
    assert (sweep.exact[0] == 1).all() and sweep.longest_perfect >= 64
    back = PasskeySweep.from_json(sweep.to_json())
    assert torch.equal(back.accuracy, sweep.accuracy) and back.longest_perfect == sweep.longest_perfect
    assert len(sweep.to_frame()) == 10 and sweep.figure().data


def test_longest_perfect_and_length_at():
    acc = torch.tensor([[1.0, 1.0], [1.0, 0.96], [0.5, 1.0], [1.0, 1.0]])
    assert longest_perfect([64, 128, 256, 512], acc) == 128  # prefix rule: 512 passing again does not count
    assert longest_perfect([64, 128], torch.tensor([[0.9, 1.0], [1.0, 1.0]])) is None
    s = PasskeySweep(lengths=[64, 256], depths=[0.5], accuracy=[[1.0], [0.0]], exact=[[1.0], [0.0]],
                     digits=[[1.0], [0.0]], recall=[[1.0], [0.0]])
    assert s.length_at(0.5) == pytest.approx(128.0)  # halfway in log-length
    assert s.length_at(1.0) == pytest.approx(64.0)
    never = synthetic_sweep("x", 1, 4096)
    assert never.length_at(0.5) is None and never.longest_perfect == 1024


def test_capacity_fit_recovers_linear_law():
    a, b = 32.0, 64.0  # T = 32·N + 64 -> 128, 192, 320
    sweeps = [synthetic_sweep(f"n{n}", n, a * n + b) for n in (2, 4, 8)]
    fit = capacity_fit(sweeps)
    assert fit.lengths == [128.0, 192.0, 320.0] and fit.state_sizes == [2.0, 4.0, 8.0]
    assert fit.a == pytest.approx(a) and fit.b == pytest.approx(b) and fit.r2_linear == pytest.approx(1.0)
    assert fit.r2_log < 1.0 and not fit.exactly_determined
    elements = capacity_fit(sweeps, state_size="elements")  # proportional N_S: slope rescaled only
    assert elements.a == pytest.approx(a / 96) and elements.b == pytest.approx(b)
    back = CapacityFit.from_json(fit.to_json())
    assert back.a == fit.a and back.names == ["n2", "n4", "n8"]
    assert list(fit.to_frame().columns) == ["name", "state_size", "T", "T_linear", "T_exp"]
    assert fit.figure().data


def test_capacity_fit_recovers_exponential_law():
    c, d = math.log(2) / 2, 5 * math.log(2)  # T = exp(c·N + d) = 2^(N/2 + 5) -> 64, 128, 256, 512
    sweeps = {n: synthetic_sweep(f"n{n}", n, math.exp(c * n + d) + 1e-6) for n in (2, 4, 6, 8)}
    fit = capacity_fit(sweeps)
    assert fit.c == pytest.approx(c) and fit.d == pytest.approx(d) and fit.r2_log == pytest.approx(1.0)
    # threshold variant: accuracy 1 at T, 0 at the next tested length -> crossing in between
    at = capacity_fit(sweeps, target="length_at", level=0.5)
    assert all(t1 < t2 for t1, t2 in zip(at.lengths, at.lengths[1:]))
    assert at.lengths[0] == pytest.approx(math.sqrt(64 * 128))


def test_capacity_fit_two_points_and_censoring():
    sweeps = [synthetic_sweep("n4", 4, 256), synthetic_sweep("n16", 16, 512)]
    fit = capacity_fit(sweeps)
    assert fit.exactly_determined and math.isnan(fit.r2_linear) and math.isnan(fit.r2_log)
    assert fit.predict_linear([4, 16]) == pytest.approx([256, 512])
    assert np.allclose(fit.predict_exp([4, 16]), [256, 512])
    assert "exactly determined" in fit.settings["note"]
    with pytest.warns(RuntimeWarning, match="censored"):
        fit = capacity_fit(sweeps + [synthetic_sweep("n64", 64, 4096)])
    assert fit.excluded[0]["name"] == "n64" and fit.names == ["n4", "n16"]


def test_capacity_bad_input():
    s = synthetic_sweep("n4", 4, 256)
    with pytest.raises(ValueError, match="sweeps"):
        capacity_fit([s])
    with pytest.raises(ValueError, match="sweeps"):
        capacity_fit({0: s, 2: s})
    with pytest.raises(ValueError, match="sweeps"):
        capacity_fit("n4")
    with pytest.raises(ValueError, match="target"):
        capacity_fit([s, s], target="t_max")
    with pytest.raises(ValueError, match="state_size"):
        capacity_fit([s, s], state_size="heads")
    with pytest.raises(ValueError, match="level"):
        capacity_fit([s, s], target="length_at", level=2)
    with pytest.raises(ValueError, match="accuracy"):
        PasskeySweep(lengths=[64], depths=[0.5], accuracy=[[1.0, 1.0]], exact=[[1.0]], digits=[[1.0]], recall=[[1.0]])
    model = make("mamba")
    with pytest.raises(ValueError, match="measure"):
        passkey_sweep(model, [64], measure="bleu", progress=False)
    with pytest.raises(ValueError, match="threshold"):
        passkey_sweep(model, [64], threshold=0, progress=False)
    with pytest.raises(ValueError, match="lengths"):
        passkey_sweep(model, [], progress=False)
    with pytest.raises(ValueError, match="depths"):
        passkey_sweep(model, [64], depths=[1.5], progress=False)
    with pytest.raises(ValueError, match="lengths"):
        passkey_sweep(make("gpt2"), [4096], progress=False)
