"""State collapse probe and its mitigations (probes/collapse.py), with hand-built ground truth.

The hand-built model: a one-layer minLSTM whose gates are set by hooks (decay f' = a, write
i' = 1) and whose weights make it predict the current token ("\\n" on the newlines stream) from the
embedding, while the mixer adds ``mean(h)/64`` of another token's direction to the residual. With
a = 1 the state grows linearly (h_t = 1.5 (t + 1)) and the prediction flips past ~2 × the training
length 64; with a = 0.5 it stays at 3 and the model stays right.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from seqlens.memory import TensorMemoryTracker
from seqlens.models import ModelConfig, build
from seqlens.probes.collapse import (DECAY_NAMES, STAT_NAMES, CollapseComparison, CollapseResult, compare,
                                     forget_more, head_view, normalize_states, state_collapse, state_window)
from seqlens.testing.tiny import CONFIGS, RECURRENT, make, tokens

NL, OTHER, L = 10, 1, 64
LINEAR = ["mamba", "gla", "retnet", "mingru", "minlstm"]
KEY = {"mamba": "ssm", "mamba2": "ssm", "gla": "S", "retnet": "S", "mingru": "h", "minlstm": "h", "lstm": "c"}


def hand_built(decay: float):
    """``(model, hooks)``: the growing (decay ≥ 1) or bounded recurrence described above."""
    cfg = ModelConfig(arch="minlstm", vocab_size=16, d_model=16, n_layers=1, d_hidden=8, pattern_heads=2,
                      norm="rmsnorm", mlp="gated", act="silu", n_ctx=L)
    m = build(cfg, seed=0).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.weight.copy_(3 * torch.eye(16))
        for norm in (m.blocks[0].ln1, m.blocks[0].ln2, m.ln_final):
            norm.weight.fill_(1.0)
        mix = m.blocks[0].mixer
        mix.in_proj.bias[:8] = 1.0  # candidate g(1) = 1.5 for every channel
        mix.out_proj.weight[OTHER] = 1.0 / (64 * 8)  # out = mean(h)/64 along token OTHER
        m.unembed.weight.copy_(8 * torch.eye(16))
    hooks = [("blocks.0.mixer.hook_decay", lambda t, hook: torch.full_like(t, decay)),
             ("blocks.0.mixer.hook_input_gate", lambda t, hook: torch.ones_like(t))]
    return m, hooks


def run(model, hooks, mitigation=None, **kw) -> CollapseResult:
    """state_collapse on the newlines stream under the hand-built hooks, then ``mitigation()`` (a
    context factory) inside them: hooks that set a gate outright must run before the edits."""
    kw = {"source": "newlines", "n_tokens": 4096, "train_len": L, "progress": False, **kw}
    with model.hooks(fwd_hooks=hooks), (mitigation() if mitigation else contextlib.nullcontext()):
        return state_collapse(model, **kw)


# ----------------------------------------------------------------------------- ground truth


def test_growing_recurrence_is_flagged_and_bounded_one_is_not():
    grow = run(*hand_built(1.0))
    assert grow.collapsed is True
    assert grow.loss_in < 0.01 and grow.loss_beyond > 10
    assert float(grow.rms_ratio.max()) > 30  # h grows linearly: 4096 / 64
    assert grow.onset is not None and L < grow.onset <= 256
    assert torch.allclose(grow.stat("decay_mean")[:, 0], torch.ones(len(grow.positions), 2))
    # the state is exactly h_t = 1.5 t after t tokens
    assert torch.allclose(grow.rms[:, 0, 0], 1.5 * grow.positions.float(), rtol=1e-5)

    overflow = run(*hand_built(1.1), n_tokens=2048)  # exponential growth: inf / NaN count as exceeding
    assert overflow.collapsed is True and not math.isfinite(overflow.loss_beyond)

    bounded = run(*hand_built(0.5))
    assert bounded.collapsed is False
    assert bounded.loss_beyond < 0.01
    assert float(bounded.rms_ratio.max()) < 1.01
    assert torch.allclose(bounded.stat("decay_max"), torch.full_like(bounded.stat("decay_max"), 0.5))


def test_normalize_states_bounds_the_growing_state_at_tau():
    model, hooks = hand_built(1.0)
    ref = torch.full((1, L), NL)
    assert run(model, hooks, chunk=16, n_tokens=2048).collapsed is True
    with model.hooks(fwd_hooks=hooks):
        with normalize_states(model, reference=ref) as info:
            tau = info["tau"]
            r = state_collapse(model, "newlines", n_tokens=2048, chunk=16, train_len=L, progress=False)
    assert torch.allclose(tau, torch.full((1, 2), 1.5 * L * 2))  # ‖h_64‖ over a head's 4 channels
    norms = r.rms * 2  # rms = ‖h‖ / sqrt(4)
    assert bool((norms <= tau * (1 + 1e-5)).all())
    assert torch.allclose(norms[-1], tau)
    assert int(info["clipped"].sum()) > 0
    assert r.collapsed is False
    assert r.settings["mitigations"][0]["name"] == "normalize_states"


def test_normalize_states_fixed_tau_and_bad_tau():
    model, hooks = hand_built(1.0)
    with model.hooks(fwd_hooks=hooks), normalize_states(model, tau=10.0):
        r = state_collapse(model, "newlines", n_tokens=512, chunk=128, train_len=L, progress=False)
    assert float(r.rms.max()) * 2 <= 10.0 * (1 + 1e-5)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="tau"):
            with normalize_states(model, tau=bad):
                pass
    with pytest.raises(ValueError, match="tau"):
        with normalize_states(model, tau=torch.ones(3)):
            pass
    with pytest.raises(ValueError, match="reference"):  # no recipe to draw a default reference from
        with normalize_states(model):
            pass


def test_forget_more_reduces_the_state():
    model, hooks = hand_built(1.0)
    before = run(model, hooks, n_tokens=1024)
    after = run(model, hooks, lambda: forget_more(model, b_scale=0.5), n_tokens=1024)
    assert torch.allclose(after.rms, 0.5 * before.rms, rtol=1e-5)  # the state is linear in the write
    model, hooks = hand_built(0.9)
    before = run(model, hooks, n_tokens=1024)
    after = run(model, hooks, lambda: forget_more(model, decay_scale=2.0), n_tokens=1024)
    assert torch.allclose(after.stat("decay_mean"), torch.full_like(after.stat("decay_mean"), 0.81))
    assert torch.allclose(after.rms[-1], before.rms[-1] * 0.1 / 0.19, rtol=1e-4)  # 1.5/(1-a) steady state
    cmp = compare(before, after, "forget_more(decay_scale=2)")
    assert isinstance(cmp, CollapseComparison)
    assert list(cmp.to_frame()["run"]) == ["before", "after"]
    assert CollapseComparison.from_json(cmp.to_json()).after.rms.shape == after.rms.shape
    cmp.figure()


@pytest.mark.parametrize("name", ["mamba", "gla", "retnet", "mingru", "minlstm"])
def test_forget_more_b_scale_scales_the_first_layer_state(name):
    model, x = make(name).eval(), tokens(2, 40)
    base = model.stream(x, chunk_size=16, return_logits=False).state.layers[0][KEY[name]]
    with forget_more(model, b_scale=0.25):
        edited = model.stream(x, chunk_size=16, return_logits=False).state.layers[0][KEY[name]]
    assert torch.allclose(edited, 0.25 * base, rtol=1e-4, atol=1e-6)


def test_forget_more_decay_scale_is_an_A_multiplier():
    """Mamba: Δ·c with B/c equals the model whose A is multiplied by c (same logits)."""
    model, x = make("mamba").eval(), tokens(2, 40)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for b in other.blocks:
            b.mixer.A_log.add_(math.log(3.0))
    with forget_more(model, decay_scale=3.0):
        got = model.stream(x, chunk_size=16).logits
    assert torch.allclose(got, other(x), atol=1e-4)
    # GLA: log g · c is gate_normalizer / c
    model = make("gla").eval()
    other = copy.deepcopy(model)
    for b in other.blocks:
        b.mixer.gate_normalizer /= 2.0
    with forget_more(model, decay_scale=2.0):
        got = model(x)
    assert torch.allclose(got, other(x), atol=1e-5)


# ----------------------------------------------------------------------------- state_window


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("window,covered", [(32, 32), (40, 48)])
def test_state_window_equals_the_state_of_the_last_tokens(name, window, covered):
    """At the end of the stream every layer's state equals its mixer run from a zero state on the
    inputs it saw over the last ``covered`` tokens (the window rounded up to whole chunks)."""
    model, x = make(name).eval(), tokens(2, 96, seed=1)
    n, chunk = x.shape[1], 16
    seen = {l: [] for l in range(model.cfg.n_layers)}
    conv = {}

    def grab(t, hook):
        seen[int(hook.name.split(".")[1])].append(t.detach().clone())

    def cb(start, logits, state):
        if start + logits.shape[1] == n - covered and name == "mamba":
            conv.update({l: s["conv"].clone() for l, s in enumerate(state.layers)})

    hooks = [(f"blocks.{l}.ln1.hook_out", grab) for l in range(model.cfg.n_layers)]
    with state_window(model, window), model.hooks(fwd_hooks=hooks):
        final = model.stream(x, chunk_size=chunk, callback=cb, return_logits=False).state
    for l, block in enumerate(model.blocks):
        inputs = torch.cat(seen[l], 1)[:, -covered:]
        start = block.mixer.init_state(2, x.device, torch.float32)
        if name == "mamba":
            start["conv"] = conv[l]
        _, want = block.mixer(inputs, state=start, pos=n - covered)
        got = final.layers[l][KEY[name]]
        assert torch.allclose(got, want[KEY[name]], rtol=1e-4, atol=1e-5), (l, (got - want[KEY[name]]).abs().max())


def test_state_window_bounds_the_growing_state_and_attention_cache():
    model, hooks = hand_built(1.0)
    r = run(model, hooks, lambda: state_window(model, 128), n_tokens=2048)
    assert torch.allclose(r.rms[-1, 0], torch.full((2,), 1.5 * 128), rtol=1e-4)
    assert r.collapsed is False
    m, x = make("llama").eval(), tokens(1, 48)
    full = m.stream(x, chunk_size=8).state
    with state_window(m, 16):
        win = m.stream(x, chunk_size=8).state
    assert win.layers[0]["k"].shape[2] == 16
    assert torch.equal(win.layers[0]["k"], full.layers[0]["k"][:, :, -16:])  # layer 0 keys depend on tokens only
    with pytest.raises(NotImplementedError, match="nonlinear"):
        with state_window(make("lstm"), 16):
            pass
    with pytest.raises(ValueError, match="window"):
        with state_window(model, 0):
            pass


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name", RECURRENT)
def test_every_recurrent_architecture_runs(name):
    model = make(name).eval()
    r = state_collapse(model, "repeat", n_tokens=300, chunk=64, train_len=100, progress=False)
    C, H = len(r.positions), r.state.shape[2]
    assert r.positions.tolist() == [64, 100, 128, 192, 256, 300]
    assert r.state.shape == (C, model.cfg.n_layers, H, len(STAT_NAMES))
    assert r.decay.shape == (C, model.cfg.n_layers, H, len(DECAY_NAMES))
    assert bool(torch.isfinite(r.state).all()) and bool(torch.isfinite(r.decay).all())
    assert bool((r.decay[..., 2] > 0).all()) and bool((r.decay[..., 3] <= 1).all())
    assert torch.isnan(r.cos[0]).all() and bool((r.cos[1:].abs() <= 1 + 1e-5).all())
    assert int(r.chunk_count.sum()) == 299 and int(r.bucket_count.sum()) == 299
    assert r.collapsed in (True, False)
    with forget_more(model, b_scale=0.5, decay_scale=2.0):
        model(tokens(1, 20))
    tau = 0.5 * float(r.rms[-1].min())  # below every head's norm: every carried state is rescaled
    G = head_view(model.init_state(1).layers[0][KEY[name]], H).shape[-1]
    with normalize_states(model, tau=tau) as info:
        n = state_collapse(model, "repeat", n_tokens=300, chunk=64, train_len=100, progress=False)
    assert torch.allclose(n.rms * math.sqrt(G), torch.full_like(n.rms, tau), rtol=1e-4)
    assert int(info["clipped"].sum()) == len(n.positions) * model.cfg.n_layers * H


def test_statistics_match_the_state():
    """The recorded statistics are those of the carried state's head view."""
    model = make("gla").eval()
    x = tokens(2, 200)
    r = state_collapse(model, x, chunk=128, train_len=200, progress=False)
    state = model.stream(x, chunk_size=128, return_logits=False).state
    view = head_view(state.layers[1]["S"], 4).transpose(0, 1).reshape(4, -1)
    want = torch.stack([view.mean(1), view.var(1, correction=0), view.pow(2).mean(1).sqrt(),
                        view.median(1).values, view.amin(1), view.amax(1)], 1)
    assert torch.allclose(r.state[-1, 1], want, atol=1e-6)
    with torch.no_grad():
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), x[:, 1:].reshape(-1))
    per_chunk = (r.chunk_loss * r.chunk_count).sum() / r.chunk_count.sum()
    assert abs(float(per_chunk) - float(loss)) < 1e-4
    assert r.collapsed is None  # never past the training length


@pytest.mark.parametrize("name", ["llama", "fox"])
def test_attention_gets_kv_statistics(name):
    model = make(name).eval()
    r = state_collapse(model, "repeat", n_tokens=256, chunk=64, train_len=64, progress=False)
    assert bool(torch.isfinite(r.state).all()) and torch.isnan(r.cos).all()
    assert bool(torch.isfinite(r.decay).all()) == (name == "fox")
    with pytest.raises(NotImplementedError, match="not applicable"):
        with normalize_states(model, tau=1.0):
            pass
    if name == "llama":
        with pytest.raises(NotImplementedError, match="not applicable"):
            with forget_more(model, decay_scale=2.0):
                pass


def test_learned_positions_cannot_run_past_n_ctx():
    with pytest.raises(ValueError, match="n_tokens"):
        state_collapse(make("gpt2"), "newlines", n_tokens=512, progress=False)


# ----------------------------------------------------------------------------- memory, sources, io


def _peak(model, n: int) -> int:
    with TensorMemoryTracker() as mem:
        state_collapse(model, "repeat", n_tokens=n, chunk=128, train_len=128, progress=False)
    return mem.report.peak_bytes


def test_memory_does_not_grow_with_length():
    model = make("mamba").eval()
    small, large = _peak(model, 1024), _peak(model, 4096)  # 8 vs 32 chunks
    assert large <= small * 1.01, (small, large)


def test_sources_iterables_and_zoo_task_stream():
    model = make("mingru").eval()
    x = tokens(1, 300)
    a = state_collapse(model, x, chunk=64, train_len=100, progress=False)
    b = state_collapse(model, iter(x.split(50, dim=1)), chunk=64, train_len=100, progress=False)
    assert torch.equal(a.positions, b.positions) and torch.allclose(a.state, b.state) and torch.allclose(
        a.chunk_loss, b.chunk_loss, equal_nan=True)
    import seqlens

    org = seqlens.load("passkey-mamba-n4").eval()
    r = state_collapse(org, "task", n_tokens=1024, batch=2, progress=False)
    assert r.train_len == 64 and r.settings["train_len_from"].startswith("recipe")
    assert r.positions[0] == 64 and r.settings["batch"] == 2
    # trained on the passkey's loss_mask: only the 5 answer digits of each 64-token prompt count
    assert int(r.chunk_count.sum()) == 2 * 5 * (1024 // 64) and "loss_mask" in r.settings["loss_positions"]
    with normalize_states(org) as info:  # default reference: the organism's own task stream
        assert info["tau"].shape == (3, 8) and bool((info["tau"] > 0).all())


def test_result_views_and_json():
    model, hooks = hand_built(1.0)
    r = run(model, hooks, n_tokens=1024)
    df = r.to_frame()
    assert len(df) == len(r.positions) * 2 and {"rms", "cos", "decay_mean", "loss", "position"} <= set(df.columns)
    lf = r.loss_frame()
    assert lf["start"].tolist() == [0, 64, 128, 256, 512] and lf["beyond"].tolist() == [False] + [True] * 4
    back = CollapseResult.from_json(r.to_json())
    assert torch.allclose(back.state, r.state) and back.collapsed == r.collapsed and back.onset == r.onset
    fig = r.figure()
    assert any(s.x0 == L for s in fig.layout.shapes)
    assert "rule" in r.settings and r.settings["loss_margin"] == 0.5 and r.settings["rms_ratio"] == 2.0


@pytest.mark.parametrize("kwargs,name", [
    ({"source": "words"}, "source"), ({"source": torch.zeros(5, dtype=torch.long)}, "source"),
    ({"source": 3}, "source"), ({"chunk": 0}, "chunk"), ({"n_tokens": 1}, "n_tokens"),
    ({"train_len": 0}, "train_len"), ({"batch": 0}, "batch"), ({"loss_margin": -1.0}, "loss_margin"),
    ({"source": torch.zeros(2, 10, dtype=torch.long), "n_tokens": 20}, "n_tokens"),
    ({"source": torch.zeros(2, 10, dtype=torch.long), "batch": 3}, "batch"),
    ({"source": "task"}, "source"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        state_collapse(make("mingru"), **{"n_tokens": 256, "progress": False, **kwargs})
    with pytest.raises(ValueError, match="b_scale"):
        with forget_more(make("mingru"), b_scale=0.0):
            pass


def test_million_token_study_runs_small(tmp_path, capsys):
    """studies/collapse_million.py end to end on a short stream (the 1M run is in docs/findings.md)."""
    import json

    from seqlens.studies.collapse_million import main

    assert main(["--model", "passkey-mamba-n4", "--tokens", "1024", "--short", "512", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tokens"] == 1024 and metrics["train_len"] == 64
    assert metrics["tensor_peak_full_KiB"] == metrics["tensor_peak_short_KiB"]  # memory does not grow
    assert metrics["collapsed"] is True and metrics["loss_beyond"] > metrics["loss_in"] + 0.5
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert "tokens" in capsys.readouterr().out
