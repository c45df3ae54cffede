"""GLA and RetNet mixers (models/gla.py; the kernels are tested in test_kernel_gla.py): implicit
attention rebuilds the mixer, hooks have their documented shapes, head ablations stay
in their head, RetNet decays follow the paper, and open gates give plain linear attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlens.models.gla import GatedLinearAttention, Retention, gla_recurrent_ref, theta_shift
from seqlens.testing.tiny import CONFIGS, make, tokens

# ----------------------------------------------------------------------------- mixers in models


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_mixer_types_and_chunk_sizes_agree(name):
    model = make(name)
    assert isinstance(model.blocks[0].mixer, Retention if name == "retnet" else GatedLinearAttention)
    toks = tokens(2, 70)
    full = model(toks)
    for block in model.blocks:
        block.mixer.chunk_size = 64
    torch.testing.assert_close(model(toks), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_mixer_output_matches_formula(name):
    model = make(name)
    toks = tokens(2, 21)
    _, cache = model.run_with_cache(toks)
    m = model.blocks[1].mixer
    x = cache["blocks.1.ln1.hook_out"]
    Bt, T, _ = x.shape
    heads = lambda t: t.view(Bt, T, m.n_heads, -1)  # noqa: E731
    q, k = heads(m.q_proj(x)), heads(m.k_proj(x))
    if model.cfg.positions == "rotary":  # RetNet's xPos rotation (checked against the paper in test_retnet.py)
        q, k = theta_shift(q, torch.arange(T)), theta_shift(k, torch.arange(T))
    o = gla_recurrent_ref(q, k, heads(m.v_proj(x)), m.log_decay(x)).o
    torch.testing.assert_close(o, cache["blocks.1.mixer.hook_z"], atol=1e-5, rtol=1e-4)
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps) * m.g_norm.weight
    out = m.o_proj(normed.reshape(Bt, T, -1) * F.silu(m.g_proj(x)))
    torch.testing.assert_close(out, cache["blocks.1.mixer.hook_out"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_pattern_rebuilds_hook_z(name):
    model = make(name)
    for block in model.blocks:
        block.mixer.chunk_size = 8  # hook_z then comes from five chunks and their states
    toks = tokens(2, 40)
    _, cache = model.run_with_cache(toks)
    for layer in range(model.cfg.n_layers):
        pattern = model.mixer_pattern(toks, layer)
        assert pattern.shape == (2, model.cfg.n_heads, 40, 40)
        assert pattern.triu(1).abs().max() == 0
        rebuilt = torch.einsum("bhts,bshd->bthd", pattern, cache[f"blocks.{layer}.mixer.hook_v"])
        target = cache[f"blocks.{layer}.mixer.hook_z"]
        rel = (rebuilt - target).norm() / target.norm()
        assert rel < 1e-3, f"layer {layer}: relative rebuild error {rel:.2e}"


def test_retnet_pattern_is_gamma_power_times_qk():
    model = make("retnet")  # with the xPos rotation: q, k after it (tests/models/test_retnet.py checks Θ)
    toks = tokens(1, 12)
    m = model.blocks[0].mixer
    x = model.mixer_input(toks, 0)
    _, cache = model.run_with_cache(toks)
    q, k = cache["blocks.0.mixer.hook_rot_q"], cache["blocks.0.mixer.hook_rot_k"]
    t = torch.arange(12)
    powers = (t[:, None] - t[None, :]).clamp(min=0).double()
    decay = (m.gamma[:, None, None] ** powers).float().tril()  # [H, L, L]
    expected = torch.einsum("bthi,bshi->bhts", q * m.scale, k) * decay
    torch.testing.assert_close(m.pattern(x), expected, atol=1e-6, rtol=1e-5)


def test_retnet_decay_values_follow_the_paper():
    model = make("retnet")
    m = model.blocks[0].mixer
    H = model.cfg.n_heads
    expected = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=torch.float64)
    torch.testing.assert_close(m.gamma, expected, atol=0, rtol=0)
    _, cache = model.run_with_cache(tokens(2, 6))
    log_decay = cache["blocks.0.mixer.hook_log_decay"]
    assert log_decay.shape == (2, 6, H, m.d_k)
    torch.testing.assert_close(log_decay, expected.log().float().view(1, 1, H, 1).expand_as(log_decay))
    assert not any("gk_proj" in n for n, _ in model.named_parameters())


def expected_mixer_hooks(name: str, Bt: int, L: int) -> dict[str, tuple[int, ...]]:
    cfg = CONFIGS[name]
    H, dk, dv = cfg.n_heads, cfg.key_dim // cfg.n_heads, cfg.value_dim // cfg.n_heads
    shapes = {"hook_q": (Bt, L, H, dk), "hook_k": (Bt, L, H, dk), "hook_v": (Bt, L, H, dv),
              "hook_log_decay": (Bt, L, H, dk), "hook_z": (Bt, L, H, dv),
              "g_norm.hook_scale": (Bt, L, H, 1), "g_norm.hook_normalized": (Bt, L, H, dv),
              "g_norm.hook_out": (Bt, L, H, dv),
              "hook_out_gate": (Bt, L, cfg.value_dim), "hook_out": (Bt, L, cfg.d_model)}
    if cfg.positions == "rotary":  # RetNet's xPos rotation
        shapes.update({"hook_rot_q": (Bt, L, H, dk), "hook_rot_k": (Bt, L, H, dk)})
    return {f"blocks.{l}.mixer.{k}": v for l in range(cfg.n_layers) for k, v in shapes.items()}


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_mixer_hooks_fire_with_documented_shapes(name):
    model = make(name)
    _, cache = model.run_with_cache(tokens(2, 9))
    got = {k: tuple(v.shape) for k, v in cache.items() if ".mixer." in k}
    expected = expected_mixer_hooks(name, 2, 9)
    assert got == expected
    state_hooks = {f"blocks.{l}.mixer.hook_state" for l in range(model.cfg.n_layers)}
    assert {k for k in model.hook_dict if ".mixer." in k} == set(expected) | state_hooks
    cfg = model.cfg
    with model.tap_states([0, 4, 8]):
        _, cache = model.run_with_cache(tokens(2, 9), names_filter=lambda n: n.endswith("hook_state"))
    assert cache["blocks.1.mixer.hook_state"].shape == (2, 3, cfg.n_heads, cfg.key_dim // cfg.n_heads,
                                                         cfg.value_dim // cfg.n_heads)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_tap_states_across_chunks_equal_step_loop(name):
    model = make(name)
    for block in model.blocks:
        block.mixer.chunk_size = 4
    toks = tokens(2, 19)
    positions = [0, 3, 4, 11, 18]
    state = model.init_state(2)
    states = []
    for t in range(19):
        _, state = model.step(toks[:, t], state)
        states.append(state.layers[1]["S"])
    with model.tap_states(positions):
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_state"))
    expected = torch.stack([states[p] for p in positions], 1)
    torch.testing.assert_close(cache["blocks.1.mixer.hook_state"], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_head_ablation_changes_only_that_heads_group_norm_output(name):
    model = make(name)
    toks = tokens(2, 15)
    layer, head = 1, 2
    _, clean = model.run_with_cache(toks)

    def zero_head(o, hook):
        o = o.clone()
        o[:, :, head] = 0
        return o

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mixer.hook_z", zero_head)]):
        _, ablated = model.run_with_cache(toks)
    p = f"blocks.{layer}.mixer."
    normed, normed_ab = clean[p + "g_norm.hook_out"], ablated[p + "g_norm.hook_out"]
    others = [h for h in range(model.cfg.n_heads) if h != head]
    torch.testing.assert_close(normed_ab[:, :, others], normed[:, :, others], atol=0, rtol=0)
    assert normed_ab[:, :, head].abs().max() == 0 and normed[:, :, head].abs().max() > 0
    # hook_out drops exactly that head's gated contribution through o_proj
    dv = model.cfg.value_dim // model.cfg.n_heads
    cols = slice(head * dv, (head + 1) * dv)
    m = model.blocks[layer].mixer
    contribution = (normed[:, :, head] * clean[p + "hook_out_gate"][..., cols]) @ m.o_proj.weight[:, cols].T
    torch.testing.assert_close(ablated[p + "hook_out"], clean[p + "hook_out"] - contribution,
                               atol=1e-5, rtol=1e-4)


def test_open_gates_give_plain_causal_linear_attention():
    model = make("gla")
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.gk_proj[1].weight.zero_()
            block.mixer.gk_proj[1].bias.fill_(200.0)  # logsigmoid(200) = -e^-200 -> log g = 0
    toks = tokens(2, 90)  # several chunks
    _, cache = model.run_with_cache(toks)
    assert cache["blocks.0.mixer.hook_log_decay"].abs().max() == 0
    for layer in range(model.cfg.n_layers):
        p = f"blocks.{layer}.mixer."
        q, k, v = cache[p + "hook_q"], cache[p + "hook_k"], cache[p + "hook_v"]
        scores = torch.einsum("bthi,bshi->bhts", q * model.blocks[layer].mixer.scale, k)
        o = torch.einsum("bhts,bshd->bthd", scores.tril(), v)  # un-normalised, no softmax
        torch.testing.assert_close(cache[p + "hook_z"], o, atol=1e-5, rtol=1e-4)


def test_gla_decays_vary_with_the_input():
    model = make("gla")
    _, cache = model.run_with_cache(tokens(1, 16))
    log_g = cache["blocks.0.mixer.hook_log_decay"]
    assert (log_g < 0).all() and log_g.std(1).min() > 0
    assert log_g.min() >= F.logsigmoid(torch.tensor(-1e4)) / model.cfg.gate_normalizer
