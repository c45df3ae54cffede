"""LSTM mixer: equals torch.nn.LSTM with the same weights, hooks fire with their documented shapes,
the conditional decomposition rebuilds the cell, and hook edits feed the recurrence."""

from __future__ import annotations

import torch

from seqlens.models import build
from seqlens.models.lstm import HOOK, LSTMMixer
from seqlens.testing.tiny import CONFIGS, make, tokens

D = CONFIGS["lstm"].hidden_dim


def torch_lstm(mixer: LSTMMixer) -> torch.nn.LSTM:
    """``torch.nn.LSTM`` (batch_first) carrying the mixer's weights: same gate order (i, f, g, o)."""
    ref = torch.nn.LSTM(mixer.cfg.d_model, mixer.hidden_dim, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(mixer.in_proj.weight)
        ref.weight_hh_l0.copy_(mixer.hidden_proj.weight)
        ref.bias_ih_l0.copy_(mixer.in_proj.bias)
        ref.bias_hh_l0.zero_()
    return ref


def mixer_and_input(L: int = 23, B: int = 2):
    model = make("lstm")
    x = model.mixer_input(tokens(B, L), 1)
    return model, model.blocks[1].mixer, x


# ----------------------------------------------------------------------------- ground truth


def test_equals_torch_lstm_with_copied_weights():
    model, mixer, x = mixer_and_input()
    ref = torch_lstm(mixer)
    _, cache = model.run_with_cache(tokens(2, 23))
    with torch.no_grad():
        h_ref, (h_last, c_last) = ref(x)
    torch.testing.assert_close(cache["blocks.1.mixer.hook_z"], h_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.1.mixer.hook_c"][:, -1], c_last[0], atol=1e-6, rtol=1e-5)
    # continuing from a state
    state = {"h": torch.randn(2, D), "c": torch.randn(2, D)}
    with torch.no_grad():
        out, new = mixer(x, state=state)
        h_ref, (h_last, c_last) = ref(x, (state["h"][None], state["c"][None]))
    torch.testing.assert_close(out, mixer.out_proj(h_ref), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new["h"], h_last[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new["c"], c_last[0], atol=1e-6, rtol=1e-5)


def test_forget_gate_bias_starts_at_one():
    model = build(CONFIGS["lstm"], seed=0)
    bias = model.blocks[0].mixer.in_proj.bias.detach()
    bound = 1 / CONFIGS["lstm"].d_model ** 0.5  # nn.Linear's uniform init
    assert ((bias[D:2 * D] - 1).abs() <= bound).all()
    assert (bias[:D].abs() <= bound).all() and (bias[2 * D:].abs() <= bound).all()


# ----------------------------------------------------------------------------- hooks


def test_hooks_fire_with_documented_shapes():
    model = make("lstm")
    B, L, positions = 2, 9, [0, 3, 8]
    with model.tap_states(positions):
        _, cache = model.run_with_cache(tokens(B, L))
    expected = {k: (B, L, D) for k in ("hook_input_gate", "hook_decay", "hook_candidate", "hook_out_gate",
                                      "hook_c", "hook_z")}
    expected |= {"hook_out": (B, L, model.cfg.d_model), "hook_state": (B, len(positions), 2, D)}
    for l in range(model.cfg.n_layers):
        p = f"blocks.{l}.mixer."
        assert {k.split(".")[-1]: tuple(v.shape) for k, v in cache.items() if k.startswith(p)} == expected
        torch.testing.assert_close(cache[p + "hook_state"][:, :, 0], cache[p + "hook_z"][:, positions])
        torch.testing.assert_close(cache[p + "hook_state"][:, :, 1], cache[p + "hook_c"][:, positions])
        # the module equations hold between the hooked quantities
        i, f, g, o, c, h = (cache[p + HOOK[k]] for k in "ifgoch")
        c_prev = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], 1)
        torch.testing.assert_close(c, f * c_prev + i * g)
        torch.testing.assert_close(h, o * torch.tanh(c))


def test_read_only_hooks_run_the_loop_once():
    model = make("lstm")
    calls = []
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_decay", lambda x, hook: calls.append(x.shape))]):
        logits = model(tokens(1, 11))
    assert calls == [(1, 11, D)]
    torch.testing.assert_close(logits, model(tokens(1, 11)))


# ----------------------------------------------------------------------------- implicit attention


def test_conditional_decomposition_rebuilds_the_cell():
    model = make("lstm")
    toks = tokens(2, 40)
    _, cache = model.run_with_cache(toks)
    for layer, block in enumerate(model.blocks):
        x = cache[f"blocks.{layer}.ln1.hook_out"]
        alpha = block.mixer.implicit_attention(x)  # [B, D_h, L, L]
        rebuilt = torch.einsum("bdts,bsd->btd", alpha, cache[f"blocks.{layer}.mixer.hook_candidate"])
        target = cache[f"blocks.{layer}.mixer.hook_c"]
        rel = (rebuilt - target).norm() / target.norm()
        assert rel < 1e-3, f"layer {layer}: relative rebuild error {rel:.2e}"
        i, f = cache[f"blocks.{layer}.mixer.hook_input_gate"], cache[f"blocks.{layer}.mixer.hook_decay"]
        assert torch.isclose(alpha[1, 3, 20, 10], i[1, 10, 3] * f[1, 11:21, 3].prod())
        pattern = model.mixer_pattern(toks, layer)
        grouped = alpha.view(2, model.cfg.n_groups, -1, 40, 40).mean(2)
        torch.testing.assert_close(pattern, grouped, atol=1e-6, rtol=1e-5)
        assert pattern.triu(1).abs().max() == 0
        torch.testing.assert_close(block.mixer.pattern(x, budget=1), pattern, atol=1e-7, rtol=1e-6)


# ----------------------------------------------------------------------------- interventions


def zero_channel(d: int, position: int | None = None):
    def hook(x, hook):
        x = x.clone()
        x[:, slice(None) if position is None else position, d] = 0
        return x
    return hook


def test_cell_ablation_feeds_the_recurrence():
    """Zeroing cell d (hook_c) at every step equals the loop run with that edit, and equals the
    step-by-step model under the same hook; later gates see the changed h."""
    model, mixer, x = mixer_and_input(L=17)
    d = 7
    with torch.no_grad():
        pre = mixer.in_proj(x)
        h0 = torch.zeros(2, D)

        def edit(name, t, value):
            return value.index_fill(-1, torch.tensor([d]), 0.0) if name == "c" else value

        expected = mixer.loop(pre, h0, h0.clone(), edit)
    hook = ("blocks.1.mixer.hook_c", zero_channel(d))
    with model.hooks(fwd_hooks=[hook]):
        _, cache = model.run_with_cache(tokens(2, 17))
        streamed = model.stream(tokens(2, 17), chunk_size=1).logits
    for k in "ifgoch":
        torch.testing.assert_close(cache["blocks.1.mixer." + HOOK[k]], expected[k], atol=1e-6, rtol=1e-5)
    assert cache["blocks.1.mixer.hook_c"][..., d].abs().max() == 0  # the cache keeps the edited run
    torch.testing.assert_close(streamed, model.run_with_hooks(tokens(2, 17), fwd_hooks=[hook]), atol=2e-5, rtol=1e-4)
    _, clean = model.run_with_cache(tokens(2, 17))
    assert not torch.allclose(cache["blocks.1.mixer.hook_decay"][:, 1:], clean["blocks.1.mixer.hook_decay"][:, 1:])


def test_hidden_ablation_at_one_position():
    """Zeroing h_p[d]: earlier outputs are untouched, at p the output loses exactly out_proj column
    d's contribution, and later positions change through the recurrence."""
    model = make("lstm")
    toks = tokens(2, 15)
    p, d = 6, 3
    _, clean = model.run_with_cache(toks)
    with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_z", zero_channel(d, p))]):
        _, ablated = model.run_with_cache(toks)
    pre = "blocks.1.mixer."
    out_clean, out_ablated = clean[pre + "hook_out"], ablated[pre + "hook_out"]
    torch.testing.assert_close(out_ablated[:, :p], out_clean[:, :p])
    W = model.blocks[1].mixer.out_proj.weight
    contribution = clean[pre + "hook_z"][:, p, d, None] * W[:, d]
    torch.testing.assert_close(out_ablated[:, p], out_clean[:, p] - contribution, atol=1e-6, rtol=1e-5)
    assert (out_ablated[:, p + 1:] - out_clean[:, p + 1:]).abs().amax(-1).min() > 0
    torch.testing.assert_close(ablated["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])


def test_in_place_edit_is_detected():
    model = make("lstm")
    toks = tokens(1, 10)

    def in_place(x, hook):
        x[..., 2] = 0  # edits without returning

    def returned(x, hook):
        return zero_channel(2)(x, hook)

    a = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_candidate", in_place)])
    b = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_candidate", returned)])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, model(toks))
