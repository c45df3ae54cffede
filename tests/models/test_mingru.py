"""minGRU / minLSTM (the log-space scan itself is tested in test_kernel_linear_recurrence.py): the
mixers follow the paper's equations, planted gates do what they should, implicit attention rebuilds
the hidden state, hooks fire with their documented shapes, and channel ablations change only what they
should."""

from __future__ import annotations

import pytest
import torch

from seqlens.models.mingru import (
    MinGRUMixer,
    MinLSTMMixer,
    decay_attention,
)
from seqlens.models.kernels.linear_recurrence import mingru_scan_ref
from seqlens.testing.recurrence import random_recurrence
from seqlens.testing.tiny import CONFIGS, make, tokens

MIN_RNNS = ["mingru", "minlstm"]


def test_decay_attention_matches_products():
    a, w, _ = random_recurrence(9, torch.float64, seed=3, D=3, B=1)
    alpha = decay_attention(a, w)
    t, s, d = 7, 2, 1
    assert torch.isclose(alpha[0, d, t, s], w[0, s, d] * a[0, s + 1:t + 1, d].prod())
    assert alpha[0].triu(1).abs().max() == 0
    torch.testing.assert_close(alpha[0, :, 4, 4], w[0, 4])


# ----------------------------------------------------------------------------- the paper's equations


def paper_loop(mixer, x: torch.Tensor) -> torch.Tensor:
    """The recurrence written from the paper, one token at a time, from the mixer's weights."""
    D = mixer.hidden_dim
    proj = x.double() @ mixer.in_proj.weight.double().T + mixer.in_proj.bias.double()
    cand = torch.where(proj[..., :D] >= 0, proj[..., :D] + 0.5, torch.sigmoid(proj[..., :D]))
    h, hs = torch.zeros(x.shape[0], D, dtype=torch.float64), []
    for t in range(x.shape[1]):
        if isinstance(mixer, MinLSTMMixer):
            f, i = torch.sigmoid(proj[:, t, D:2 * D]), torch.sigmoid(proj[:, t, 2 * D:])
            h = f / (f + i) * h + i / (f + i) * cand[:, t]
        else:
            z = torch.sigmoid(proj[:, t, D:])
            h = (1 - z) * h + z * cand[:, t]
        hs.append(h)
    return torch.stack(hs, 1)


@pytest.mark.parametrize("name", MIN_RNNS)
def test_mixer_follows_the_paper(name):
    model = make(name)
    _, cache = model.run_with_cache(tokens(2, 30))
    for layer, block in enumerate(model.blocks):
        x = cache[f"blocks.{layer}.ln1.hook_out"]
        torch.testing.assert_close(cache[f"blocks.{layer}.mixer.hook_z"].double(), paper_loop(block.mixer, x),
                                   atol=1e-5, rtol=1e-5)
    assert isinstance(model.blocks[0].mixer, MinLSTMMixer if name == "minlstm" else MinGRUMixer)


def test_minlstm_gates_are_normalised():
    model = make("minlstm")
    _, cache = model.run_with_cache(tokens(1, 12))
    mixer, x = model.blocks[0].mixer, cache["blocks.0.ln1.hook_out"]
    D = mixer.hidden_dim
    _, f_logit, i_logit = mixer.in_proj(x).split(D, dim=-1)
    f, i = torch.sigmoid(f_logit), torch.sigmoid(i_logit)
    torch.testing.assert_close(cache["blocks.0.mixer.hook_decay"], f / (f + i))
    torch.testing.assert_close(cache["blocks.0.mixer.hook_input_gate"], i / (f + i))


# ----------------------------------------------------------------------------- planted gates


def set_hook(value: float):
    return lambda x, hook: torch.full_like(x, value)


@pytest.mark.parametrize("name", MIN_RNNS)
def test_gate_fully_open_gives_candidate(name):
    """z = 1 (minLSTM: f' = 0, i' = 1) overwrites the state at every token: h_t = h̃_t."""
    model = make(name)
    hooks = [(f"blocks.{l}.mixer." + ("hook_input_gate" if name == "mingru" else "hook_decay"), set_hook(1.0 if name == "mingru" else 0.0)) for l in range(2)]
    if name == "minlstm":
        hooks += [(f"blocks.{l}.mixer.hook_input_gate", set_hook(1.0)) for l in range(2)]
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens(2, 25))
        stepped = model.stream(tokens(2, 25), chunk_size=1).logits
    for l in range(2):
        torch.testing.assert_close(cache[f"blocks.{l}.mixer.hook_z"], cache[f"blocks.{l}.mixer.hook_candidate"],
                                   atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(stepped, model.run_with_hooks(tokens(2, 25), fwd_hooks=hooks), atol=2e-5, rtol=1e-4)


def test_gate_closed_keeps_the_state():
    """z = 0 ignores the input: a streamed state passes through unchanged."""
    model = make("mingru")
    first = model.stream(tokens(1, 10), chunk_size=4)
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_input_gate", set_hook(0.0))]):
        rest = model.stream(tokens(1, 9, seed=1), chunk_size=4, state=first.state.clone())
    torch.testing.assert_close(rest.state.layers[0]["h"], first.state.layers[0]["h"])
    assert not torch.allclose(rest.state.layers[1]["h"], first.state.layers[1]["h"])


# ----------------------------------------------------------------------------- implicit attention


@pytest.mark.parametrize("name", MIN_RNNS)
def test_implicit_attention_rebuilds_hidden(name):
    model = make(name)
    toks = tokens(2, 40)
    _, cache = model.run_with_cache(toks)
    for layer, block in enumerate(model.blocks):
        x = cache[f"blocks.{layer}.ln1.hook_out"]
        alpha = block.mixer.implicit_attention(x)  # [B, D_h, L, L]
        assert alpha.shape == (2, model.cfg.hidden_dim, 40, 40)
        rebuilt = torch.einsum("bdts,bsd->btd", alpha, cache[f"blocks.{layer}.mixer.hook_candidate"])
        target = cache[f"blocks.{layer}.mixer.hook_z"]
        rel = (rebuilt - target).norm() / target.norm()
        assert rel < 1e-3, f"layer {layer}: relative rebuild error {rel:.2e}"
        torch.testing.assert_close(block.mixer.implicit_attention(x, slice(8, 20)), alpha[:, 8:20])
        pattern = model.mixer_pattern(toks, layer)
        grouped = alpha.view(2, model.cfg.n_groups, -1, 40, 40).mean(2)
        torch.testing.assert_close(pattern, grouped.float(), atol=1e-6, rtol=1e-5)
        assert pattern.triu(1).abs().max() == 0
        torch.testing.assert_close(block.mixer.pattern(x, budget=1), pattern, atol=1e-7, rtol=1e-6)


# ----------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("name", MIN_RNNS)
def test_hooks_fire_with_documented_shapes(name):
    model = make(name)
    cfg = CONFIGS[name]
    B, L, D = 2, 9, cfg.hidden_dim
    positions = [1, 4, 8]
    with model.tap_states(positions):
        _, cache = model.run_with_cache(tokens(B, L))
    expected = {"hook_input_gate": (B, L, D), "hook_decay": (B, L, D), "hook_candidate": (B, L, D),
                "hook_z": (B, L, D), "hook_out": (B, L, cfg.d_model), "hook_state": (B, len(positions), D)}
    for l in range(cfg.n_layers):
        mixer_hooks = {k.split(".")[-1]: tuple(v.shape) for k, v in cache.items() if k.startswith(f"blocks.{l}.mixer.")}
        assert mixer_hooks == expected
        # the taps are gathered from the hidden sequence
        torch.testing.assert_close(cache[f"blocks.{l}.mixer.hook_state"],
                                   cache[f"blocks.{l}.mixer.hook_z"][:, positions])
    _, plain = model.run_with_cache(tokens(B, L))
    assert not any(k.endswith("hook_state") for k in plain.keys())


# ----------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("name", MIN_RNNS)
def test_hidden_channel_ablation_removes_its_out_proj_column(name):
    model = make(name)
    toks = tokens(2, 15)
    d, layer = 5, 1
    _, clean = model.run_with_cache(toks)

    def zero_channel(h, hook):
        h = h.clone()
        h[..., d] = 0
        return h

    hook = (f"blocks.{layer}.mixer.hook_z", zero_channel)
    with model.hooks(fwd_hooks=[hook]):
        _, ablated = model.run_with_cache(toks)
        streamed = model.stream(toks, chunk_size=4)
    p = f"blocks.{layer}.mixer."
    for key in ("hook_input_gate", "hook_decay", "hook_candidate"):
        torch.testing.assert_close(ablated[p + key], clean[p + key])
    keep = torch.arange(model.cfg.hidden_dim) != d
    torch.testing.assert_close(ablated[p + "hook_z"][..., keep], clean[p + "hook_z"][..., keep])
    W = model.blocks[layer].mixer.out_proj.weight
    contribution = clean[p + "hook_z"][..., d, None] * W[:, d]
    torch.testing.assert_close(ablated[p + "hook_out"], clean[p + "hook_out"] - contribution, atol=1e-5, rtol=1e-4)
    # hook_z is the read-out: the carried state is the unedited scan, so stream == forward
    torch.testing.assert_close(streamed.state.layers[layer]["h"], clean[p + "hook_z"][:, -1])
    torch.testing.assert_close(streamed.logits, model.run_with_hooks(toks, fwd_hooks=[hook]), atol=2e-5, rtol=1e-4)


def test_candidate_edit_feeds_the_scan():
    """Editing h̃ at one position changes h from there on, as the recurrence says."""
    model = make("mingru")
    toks = tokens(1, 12)
    _, clean = model.run_with_cache(toks)

    def bump(c, hook):
        c = c.clone()
        c[:, 6] += 1.0
        return c

    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_candidate", bump)]):
        _, edited = model.run_with_cache(toks)
    z = clean["blocks.0.mixer.hook_input_gate"]
    expected = mingru_scan_ref(1 - z, z * edited["blocks.0.mixer.hook_candidate"])
    torch.testing.assert_close(edited["blocks.0.mixer.hook_z"], expected, atol=1e-6, rtol=1e-5)
    delta = (edited["blocks.0.mixer.hook_z"] - clean["blocks.0.mixer.hook_z"]).abs().amax(-1)[0]
    assert delta[:6].max() == 0 and delta[6:].min() > 0
