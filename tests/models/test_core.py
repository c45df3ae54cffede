"""Invariants of the SeqModel interface on every architecture: parallel == step == stream, state
taps equal the step loop, mixer patterns rebuild the mixer, hooks fire with documented shapes,
single-head ablations change only what they should, FoX with open gates is a plain transformer."""

from __future__ import annotations

import pytest
import torch

import seqlens
from seqlens.models import ModelState, build
from seqlens.testing.tiny import CONFIGS, FOUNDATION, RECURRENT, V, make, tokens

ARCHS = list(CONFIGS)


def step_loop(model, toks: torch.Tensor) -> tuple[torch.Tensor, list[ModelState]]:
    state = model.init_state(toks.shape[0])
    logits, states = [], []
    for t in range(toks.shape[1]):
        lo, state = model.step(toks[:, t], state)
        logits.append(lo)
        states.append(state)
    return torch.stack(logits, 1), states


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", ARCHS)
def test_forward_equals_step_equals_stream(name):
    model = make(name)
    toks = tokens(2, 37)
    with torch.no_grad():
        full = model(toks)
        stepped, _ = step_loop(model, toks)
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)
    for chunk in (1, 5, 8, 36, 64):
        out = model.stream(toks, chunk_size=chunk)
        torch.testing.assert_close(out.logits, full, atol=2e-5, rtol=1e-4, msg=f"chunk_size={chunk}")
        assert out.state.pos == 37


@pytest.mark.parametrize("name", ARCHS)
def test_stream_accepts_iterables_and_resumes_state(name):
    model = make(name)
    toks = tokens(1, 30)
    full = model.stream(toks, chunk_size=7).logits
    pieces = [toks[:, :4], toks[:, 4:19], toks[:, 19:]]
    seen = []
    out = model.stream(iter(pieces), callback=lambda start, lo, st: seen.append((start, lo.shape[1], st.pos)))
    torch.testing.assert_close(out.logits, full, atol=2e-5, rtol=1e-4)
    assert seen == [(0, 4, 4), (4, 15, 19), (19, 11, 30)]
    # continuing from a returned state equals one pass
    first = model.stream(toks[:, :13], chunk_size=5)
    rest = model.stream(toks[:, 13:], chunk_size=5, state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=2e-5, rtol=1e-4)
    assert model.stream(toks, chunk_size=6, return_logits=False).logits is None


@pytest.mark.parametrize("name", RECURRENT + ["llama"])
def test_recurrent_state_has_fixed_size_attention_cache_grows(name):
    model, grows = make(name), not CONFIGS[name].is_recurrent
    small = model.stream(tokens(1, 8), chunk_size=4).state.nbytes()
    big = model.stream(tokens(1, 64), chunk_size=4).state.nbytes()
    assert (big > small) == grows


# ----------------------------------------------------------------------------- state taps


@pytest.mark.parametrize("name", RECURRENT)
def test_tap_states_equal_step_loop_states(name):
    model = make(name)
    toks = tokens(2, 41)
    positions = [0, 5, 17, 40]
    _, states = step_loop(model, toks)
    with model.tap_states(positions):
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_state"))
    for layer, block in enumerate(model.blocks):
        tapped = cache[f"blocks.{layer}.mixer.hook_state"]
        expected = torch.stack([block.mixer.tap_value(states[p].layers[layer]) for p in positions], 1)
        assert tapped.shape[:2] == (2, len(positions))
        torch.testing.assert_close(tapped, expected, atol=1e-5, rtol=1e-4)


def test_mamba_tap_shape():
    model = make("mamba")
    with model.tap_states([2, 3]):
        _, cache = model.run_with_cache(tokens(2, 5))
    assert cache["blocks.0.mixer.hook_state"].shape == (2, 2, model.cfg.d_inner, model.cfg.d_state)


@pytest.mark.parametrize("name", RECURRENT)
def test_tap_states_across_stream_chunks_use_absolute_positions(name):
    model = make(name)
    toks = tokens(1, 50)
    positions = [3, 9, 10, 31, 49]
    _, states = step_loop(model, toks)
    got: list[torch.Tensor] = []
    hook = ("blocks.1.mixer.hook_state", lambda x, hook: got.append(x.clone()))
    with model.tap_states(positions), model.hooks(fwd_hooks=[hook]):
        model.stream(toks, chunk_size=10)
    assert [g.shape[1] for g in got] == [2, 1, 1, 1]  # chunks [0,10) [10,20) [30,40) [40,50)
    expected = torch.stack([model.blocks[1].mixer.tap_value(states[p].layers[1]) for p in positions], 1)
    torch.testing.assert_close(torch.cat(got, 1), expected, atol=1e-5, rtol=1e-4)


def test_hook_state_silent_outside_tap_states():
    model = make("mamba")
    _, cache = model.run_with_cache(tokens(1, 6))
    assert not any(k.endswith("hook_state") for k in cache.keys())


@pytest.mark.parametrize("name", RECURRENT)
def test_tap_position_past_the_input_raises(name):
    model = make(name)
    with model.tap_states([3, 12]), pytest.raises(ValueError, match="positions: tap position 12"):
        model(tokens(1, 10))


@pytest.mark.parametrize("name", ["gpt2", "fox"])
def test_tap_states_on_attention_raises(name):
    with pytest.raises(NotImplementedError, match="KV cache"):
        with make(name).tap_states([1]):
            pass


@pytest.mark.parametrize("bad", [[], [-1], [3, 2], [2, 2]])
def test_tap_states_validates_positions(bad):
    with pytest.raises(ValueError, match="positions"):
        with make("mamba").tap_states(bad):
            pass


# ----------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox", "fox"])
def test_attention_pattern_rebuilds_z(name):
    model = make(name)
    toks = tokens(2, 23)
    _, cache = model.run_with_cache(toks)
    for layer in range(model.cfg.n_layers):
        pattern = model.mixer_pattern(toks, layer)
        assert pattern.shape == (2, model.cfg.n_heads, 23, 23)
        torch.testing.assert_close(pattern, cache[f"blocks.{layer}.mixer.hook_pattern"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, 23))
        assert pattern.triu(1).abs().max() == 0  # causal
        v = cache[f"blocks.{layer}.mixer.hook_v"]  # [B, L, H_kv, dh]
        v = v.repeat_interleave(model.cfg.n_heads // model.cfg.kv_heads, dim=2)
        z = torch.einsum("bhts,bshd->bthd", pattern, v)
        torch.testing.assert_close(z, cache[f"blocks.{layer}.mixer.hook_z"], atol=1e-5, rtol=1e-4)


def test_mamba_implicit_attention_rebuilds_ssm_output():
    model = make("mamba")
    toks = tokens(2, 40)
    _, cache = model.run_with_cache(toks)
    for layer, block in enumerate(model.blocks):
        x = cache[f"blocks.{layer}.ln1.hook_out"]
        alpha = block.mixer.implicit_attention(x)  # [B, D, L, L]
        u = cache[f"blocks.{layer}.mixer.hook_conv"]  # [B, L, D]
        rebuilt = torch.einsum("bdts,bsd->btd", alpha, u) + block.mixer.D * u
        target = cache[f"blocks.{layer}.mixer.hook_z"]
        rel = (rebuilt - target).norm() / target.norm()
        assert rel < 1e-3, f"layer {layer}: relative rebuild error {rel:.2e}"
        # the head pattern is the signed mean of α over each contiguous channel group
        pattern = model.mixer_pattern(toks, layer)
        H = model.cfg.n_groups
        grouped = alpha.view(2, H, -1, 40, 40).mean(2)
        torch.testing.assert_close(pattern, grouped, atol=1e-6, rtol=1e-4)
        assert pattern.triu(1).abs().max() == 0


def test_mamba_pattern_small_budget_same_result():
    model = make("mamba")
    toks = tokens(1, 12)
    x = model.mixer_input(toks, 0)
    torch.testing.assert_close(model.blocks[0].mixer.pattern(x, budget=1),
                               model.blocks[0].mixer.pattern(x), atol=1e-7, rtol=1e-6)


# ----------------------------------------------------------------------------- hooks


def expected_hooks(name: str, B: int, L: int) -> dict[str, tuple[int, ...]]:
    cfg = CONFIGS[name]
    d = cfg.d_model
    def norm(prefix: str) -> dict[str, tuple[int, ...]]:  # TransformerLens 4's norm hooks
        return {prefix + ".hook_scale": (B, L, 1), prefix + ".hook_normalized": (B, L, d), prefix + ".hook_out": (B, L, d)}

    out = {"hook_embed": (B, L, d), **norm("ln_final")}
    if cfg.arch != "mamba" and cfg.positions == "learned":
        out["hook_pos_embed"] = (B, L, d)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        out |= {p + "hook_resid_pre": (B, L, d), p + "hook_resid_post": (B, L, d),
                **norm(p + "ln1"), p + "mixer.hook_out": (B, L, d)}
        if cfg.arch == "mamba":
            D, N = cfg.d_inner, cfg.d_state
            out |= {p + "mixer.hook_x": (B, L, D), p + "mixer.hook_conv": (B, L, D),
                    p + "mixer.hook_delta": (B, L, D), p + "mixer.hook_B": (B, L, N),
                    p + "mixer.hook_C": (B, L, N), p + "mixer.hook_z": (B, L, D),
                    p + "mixer.hook_out_gate": (B, L, D)}
            continue
        H, Hk, dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        out |= {p + "mixer.hook_q": (B, L, H, dh), p + "mixer.hook_k": (B, L, Hk, dh),
                p + "mixer.hook_v": (B, L, Hk, dh), p + "mixer.hook_attn_scores": (B, H, L, L),
                p + "mixer.hook_pattern": (B, H, L, L), p + "mixer.hook_z": (B, L, H, dh)}
        if cfg.positions == "rotary":
            out |= {p + "mixer.hook_rot_q": (B, L, H, dh), p + "mixer.hook_rot_k": (B, L, Hk, dh)}
        if cfg.arch == "fox":
            out[p + "mixer.hook_log_decay"] = (B, L, H)
        if not cfg.attn_only:
            out |= {**norm(p + "ln2"), p + "mlp.hook_pre": (B, L, cfg.mlp_dim),
                    p + "mlp.hook_post": (B, L, cfg.mlp_dim), p + "mlp.hook_out": (B, L, d)}
            if cfg.mlp == "gated":
                out[p + "mlp.hook_pre_linear"] = (B, L, cfg.mlp_dim)
            if not cfg.parallel_residual:
                out[p + "hook_resid_mid"] = (B, L, d)
    return out


@pytest.mark.parametrize("name", FOUNDATION)
def test_every_documented_hook_fires_with_its_shape(name):
    model = make(name)
    logits, cache = model.run_with_cache(tokens(2, 9))
    assert isinstance(cache, seqlens.models.base.ActivationCache)
    assert logits.shape == (2, 9, V)
    got = {k: tuple(v.shape) for k, v in cache.items()}
    expected = expected_hooks(name, 2, 9)
    if CONFIGS[name].arch == "mamba":
        hook_names = set(model.hook_dict) - {f"blocks.{l}.mixer.hook_state" for l in range(2)}
    else:
        hook_names = set(model.hook_dict)
    assert got == expected
    assert hook_names == set(expected)  # no undocumented hook points


def test_fused_attention_path_equals_explicit_path():
    for name in ("gpt2", "llama", "fox"):
        model = make(name)
        toks = tokens(2, 19)
        fused = model(toks)
        explicit = model.run_with_hooks(toks, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: x)])
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)
        st = model.init_state(2)
        lo, st = model.forward_chunk(toks[:, :7], st)
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_pattern", lambda x, hook: x)]):
            lo2, _ = model.forward_chunk(toks[:, 7:], st)
        torch.testing.assert_close(lo2, fused[:, 7:], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- ablations


@pytest.mark.parametrize("name", ["gpt2", "llama", "fox"])
def test_single_head_ablation_changes_only_that_head(name):
    model = make(name)
    toks = tokens(2, 15)
    head, layer = 2, 1
    _, clean = model.run_with_cache(toks)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    hooks = [(f"blocks.{layer}.mixer.hook_z", zero_head)]
    with model.hooks(fwd_hooks=hooks):
        _, ablated = model.run_with_cache(toks)
    # everything before the ablated layer's mixer output is untouched
    for key in ("hook_embed", f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.mixer.hook_pattern"):
        torch.testing.assert_close(ablated[key], clean[key])
    z = clean[f"blocks.{layer}.mixer.hook_z"]
    others = [h for h in range(model.cfg.n_heads) if h != head]
    torch.testing.assert_close(ablated[f"blocks.{layer}.mixer.hook_z"][:, :, others], z[:, :, others])
    # the mixer output drops exactly that head's contribution through W_O
    dh = model.cfg.head_dim
    W_o = model.blocks[layer].mixer.o.weight[:, head * dh:(head + 1) * dh]
    contribution = z[:, :, head] @ W_o.T
    torch.testing.assert_close(ablated[f"blocks.{layer}.mixer.hook_out"],
                               clean[f"blocks.{layer}.mixer.hook_out"] - contribution, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ablated["ln_final.hook_out"], clean["ln_final.hook_out"])


@pytest.mark.parametrize("name", ["llama", "fox"] + RECURRENT)
def test_ablation_at_one_position_is_causal(name):
    model = make(name)
    toks = tokens(1, 20)
    hook_name = "blocks.0.mixer.hook_out"

    def zero_pos(x, hook):
        x = x.clone()
        x[:, 11] = 0
        return x

    clean = model(toks)
    ablated = model.run_with_hooks(toks, fwd_hooks=[(hook_name, zero_pos)])
    torch.testing.assert_close(ablated[:, :11], clean[:, :11])
    assert (ablated[:, 11:] - clean[:, 11:]).abs().amax(-1).min() > 0


def test_mamba_channel_group_ablation_changes_only_that_group():
    model = make("mamba")
    toks = tokens(2, 15)
    _, clean = model.run_with_cache(toks)
    D = model.cfg.d_inner
    group = slice(16, 32)

    def zero_group(y, hook):
        y = y.clone()
        y[..., group] = 0
        return y

    with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_z", zero_group)]):
        _, ablated = model.run_with_cache(toks)
    torch.testing.assert_close(ablated["blocks.1.mixer.hook_conv"], clean["blocks.1.mixer.hook_conv"])
    keep = torch.ones(D, dtype=torch.bool)
    keep[group] = False
    torch.testing.assert_close(ablated["blocks.1.mixer.hook_z"][..., keep],
                               clean["blocks.1.mixer.hook_z"][..., keep])
    mixer = model.blocks[1].mixer
    y = clean["blocks.1.mixer.hook_z"] * clean["blocks.1.mixer.hook_out_gate"]
    contribution = y[..., group] @ mixer.out_proj.weight[:, group].T
    torch.testing.assert_close(ablated["blocks.1.mixer.hook_out"],
                               clean["blocks.1.mixer.hook_out"] - contribution, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- FoX


def test_fox_with_open_forget_gates_equals_transformer_without_positions():
    fox_cfg = CONFIGS["fox"]
    fox = make("fox")
    plain = build(fox_cfg.replace(arch="transformer"), seed=1)
    missing, unexpected = plain.load_state_dict(fox.state_dict(), strict=False)
    assert not missing and all(k.endswith(("forget.weight", "forget.bias")) for k in unexpected)
    with torch.no_grad():
        for block in fox.blocks:
            block.mixer.forget.weight.zero_()
            block.mixer.forget.bias.fill_(30.0)  # σ(30) = 1 − 1e-13: log f = 0 in fp32
    toks = tokens(2, 33)
    torch.testing.assert_close(fox(toks), plain(toks), atol=1e-5, rtol=1e-4)
    # and with closed-ish gates the two differ (the forget bias matters)
    with torch.no_grad():
        fox.blocks[0].mixer.forget.bias.fill_(-1.0)
    assert not torch.allclose(fox(toks), plain(toks), atol=1e-3)


def test_fox_state_stays_bounded_over_long_streams():
    model = make("fox")
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.forget.bias.fill_(-3.0)  # strong forgetting: c_t falls ~0.05 per token
    out = model.stream(tokens(1, 600), chunk_size=100, return_logits=False)
    c = out.state.layers[0]["c"]
    assert c.shape == (1, 4, 600)
    assert c[..., -1].abs().max() == 0  # relative to the newest token
    assert torch.isfinite(c).all()


# ----------------------------------------------------------------------------- errors and io


def test_bad_inputs_raise_clear_errors():
    model = make("gpt2")
    with pytest.raises(ValueError, match=r"tokens: expected shape \[batch, seq_len\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\)"):
        model(torch.full((1, 3), V))
    with pytest.raises(ValueError, match="n_ctx=128"):
        model(tokens(1, 129))
    with pytest.raises(ValueError, match="n_ctx=128"):
        model.stream(tokens(1, 130), chunk_size=64)
    with pytest.raises(ValueError, match=r"tokens: expected shape \[batch\]"):
        model.step(tokens(1, 2), model.init_state(1))
    with pytest.raises(ValueError, match="batch"):
        model.forward_chunk(tokens(2, 2), model.init_state(1))
    with pytest.raises(ValueError, match="chunk_size"):
        model.stream(tokens(1, 4), chunk_size=0)
    with pytest.raises(ValueError, match="layer"):
        model.mixer_pattern(tokens(1, 4), 5)


@pytest.mark.parametrize("name", RECURRENT + ["llama", "fox"])
def test_recurrent_and_rotary_models_run_past_n_ctx(name):
    model = make(name)
    assert model(tokens(1, model.cfg.n_ctx + 5)).shape[1] == model.cfg.n_ctx + 5


def test_config_validation():
    from seqlens.models import ModelConfig

    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="rnn")
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_groups"):
        ModelConfig(arch="mamba", d_model=32, pattern_heads=3)
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"arch": "mamba", "bogus": 1})
    cfg = CONFIGS["llama"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ARCHS)
def test_save_and_load_roundtrip(name, tmp_path):
    model = make(name)
    model.save(tmp_path / name)
    loaded = seqlens.load(tmp_path / name)
    assert loaded.cfg == model.cfg
    toks = tokens(1, 11)
    torch.testing.assert_close(loaded(toks), model(toks), atol=0, rtol=0)


def test_load_errors(tmp_path):
    from seqlens.models.io import CheckpointError

    with pytest.raises(FileNotFoundError, match="name_or_dir"):
        seqlens.load(str(tmp_path / "nope"))
    make("gpt2").save(tmp_path / "m")
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        seqlens.load(tmp_path / "m")
    make("gpt2").save(tmp_path / "m2")
    cfg = CONFIGS["gpt2"].replace(d_model=48)
    build(cfg).save(tmp_path / "m3")
    (tmp_path / "m2" / "config.json").write_bytes((tmp_path / "m3" / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="shape"):
        seqlens.load(tmp_path / "m2")


def test_zoo_presets_load_and_are_labelled_untrained():
    from seqlens.models import zoo

    for name in zoo.PRESETS:
        model = seqlens.load(name)
        assert "untrained" in zoo.describe(name)
        assert model(tokens(1, 4) % model.cfg.vocab_size).shape == (1, 4, model.cfg.vocab_size)
    with pytest.raises(FileNotFoundError, match="zoo"):
        seqlens.load("no-such-model")


# ----------------------------------------------------------------------------- nnsight


@pytest.mark.parametrize("name", ["llama", "mamba"])
def test_nnsight_reads_and_edits_hooks(name):
    nnsight = pytest.importorskip("nnsight")
    model = make(name)
    toks = tokens(1, 10)
    hook = "blocks.0.mixer.hook_z" if name != "mamba" else "blocks.0.mixer.hook_z"
    _, cache = model.run_with_cache(toks)
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(toks):
        seen = getattr(wrapped.blocks[0].mixer, hook.split(".")[-1]).output.save()
    torch.testing.assert_close(seen, cache[hook])

    def zero(x, hook):
        return torch.zeros_like(x)

    expected = model.run_with_hooks(toks, fwd_hooks=[(hook, zero)])
    with wrapped.trace(toks):
        getattr(wrapped.blocks[0].mixer, hook.split(".")[-1]).output[:] = 0
        logits = wrapped.output.save()
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(expected, model(toks))


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rmsnorm_keeps_float64_and_matches_its_formula(offset):
    """Low precision is normalised in float32, but a float64 model (the reference checks) stays float64."""
    from seqlens.models.base import RMSNorm

    norm = RMSNorm(8, 1e-6, offset=offset).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8, dtype=torch.float64))
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    expected = (offset + norm.weight) * x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    for out in (norm(x), norm.affine(x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt(), torch.float64)):
        assert out.dtype == torch.float64
        assert (out - expected).abs().max() < 1e-12 * expected.abs().max()
    half = norm.float()(x.float())  # float32 in, float32 out, within float32 rounding
    assert torch.allclose(half.double(), expected, rtol=1e-5)
