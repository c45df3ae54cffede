"""The mixer protocol (seqlens.models.mixer): what analyses ask every mixer, checked against the
mixer's own hooks and equations on tiny models of every architecture."""

from __future__ import annotations

import pytest
import torch

from seqlens.models import NotApplicableError
from seqlens.models.mixer import AblationSite
from seqlens.testing.tiny import CONFIGS, make, tokens

NAMES = list(CONFIGS)


def last_values(model, tokens_: torch.Tensor, names) -> list[dict[str, torch.Tensor]]:
    _, cache = model.run_with_cache(tokens_)
    return [{n: cache[f"blocks.{l}.mixer.{n}"] for n in names} for l in range(model.cfg.n_layers)]


@pytest.mark.parametrize("name", NAMES)
def test_groups_partition_the_heads_or_channels(name):
    model = make(name)
    g = model.blocks[0].mixer.groups
    assert model.n_groups == g.n and g.width % g.n == 0
    units = g.units(list(range(g.n)))
    assert torch.equal(units.sort().values, torch.arange(g.width))  # every head / channel exactly once
    assert g.hook in {h.name for h in type(model.blocks[0].mixer).HOOKS}


@pytest.mark.parametrize("name", NAMES)
def test_declared_hooks_of_the_protocol_exist(name):
    """Decay hooks, gate hooks, the memory hook and every hook the LRP rules name are real hooks."""
    model = make(name)
    mixer = model.blocks[0].mixer
    declared = {h.name for h in mixer.hook_specs(model.cfg)}
    named = set(mixer.decay_hooks) | {g.hook for g in mixer.gates()} | set(filter(None, [mixer.memory_hook]))
    named |= {n for n in mixer.lrp.detach if n.startswith(("hook_", "g_norm."))}
    assert named <= declared, named - declared


@pytest.mark.parametrize("name", [n for n in NAMES if CONFIGS[n].is_recurrent and n != "lstm"])
def test_log_chunk_decay_is_the_product_of_the_per_token_decays(name):
    model = make(name)
    mixer = model.blocks[1].mixer
    seen = last_values(model, tokens(2, 9), mixer.decay_hooks)[1]
    per_token = mixer.decay(seen).double()  # [B, T, ...]
    log_chunk = mixer.log_chunk_decay(seen)
    prod = per_token.log().sum(1)
    torch.testing.assert_close(torch.broadcast_to(prod.reshape(log_chunk.shape[:prod.dim()] + (1,) * (log_chunk.dim() - prod.dim())), log_chunk.shape), log_chunk, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_view_splits_the_state_into_the_groups(name):
    model = make(name)
    out = model.stream(tokens(2, 6), chunk_size=3)
    for mixer, layer_state in zip(model.mixers, out.state.layers):
        view = mixer.state_view(layer_state, 3, model.n_groups)
        assert view.shape[:2] == (2, model.n_groups)
        if mixer.state_spec.fixed_size:
            assert view.numel() == layer_state[mixer.state_spec.key].numel()


@pytest.mark.parametrize("name", NAMES)
def test_ov_factors_are_exact_for_attention_only(name):
    model = make(name)
    f = model.blocks[0].mixer.ov_factors()
    W_V, W_O, kind = f  # unpacks as before
    assert W_V.shape[0] == W_O.shape[0] == model.n_groups and W_V.shape[2] == W_O.shape[1]
    assert f.exact == model.is_softmax and f.description and kind == f.kind


@pytest.mark.parametrize("name", NAMES)
def test_set_backend_reaches_every_mixer_and_validates(name):
    model = make(name)
    backends = model.blocks[0].mixer.BACKENDS
    ref = model(tokens(1, 7))
    for b in backends:
        if b == "triton":
            continue
        model.set_backend(b)
        assert model.backend == b and all(m.backend == b for m in model.mixers)
        torch.testing.assert_close(model(tokens(1, 7)), ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cuda")
    model.set_backend("auto")


def test_mamba_scan_backend_is_the_backend():
    model = make("mamba")
    model.blocks[0].mixer.scan_backend = "ref"
    assert model.blocks[0].mixer.backend == "ref"


@pytest.mark.parametrize("name", NAMES)
def test_applies_to_agrees_with_not_applicable_error(name):
    """Each analysis' applies_to(model) is True exactly when it runs without NotApplicableError."""
    from seqlens.circuits.sinks import calibrate_sinks
    from seqlens.probes.collapse import forget_more, normalize_states, state_window
    from seqlens.probes.gates import gate_saturation

    model = make(name)
    toks = tokens(1, 6)
    calls = {
        model.attention_stats: lambda: model.attention_stats(toks, 0),
        model.tap_states: lambda: model.tap_states([1]).__enter__(),
        calibrate_sinks: lambda: calibrate_sinks(model, [(0, 0)]).__enter__(),
        gate_saturation: lambda: gate_saturation(model, toks),
        forget_more: lambda: forget_more(model, decay_scale=2.0).__enter__(),
        normalize_states: lambda: normalize_states(model, tau=1.0).__enter__(),
        state_window: lambda: state_window(model, 4).__enter__(),
    }
    for fn, call in calls.items():
        try:
            call()
            ran = True
        except NotApplicableError:
            ran = False
        finally:
            model.reset_hooks(including_permanent=True)
            for m in model.mixers:
                m.tap_positions = None
                m._forward_hooks.clear()
                m._forward_pre_hooks.clear()
        assert fn.applies_to(model) == ran, (fn, ran)


def test_not_applicable_error_keeps_existing_handlers_working():
    assert issubclass(NotApplicableError, NotImplementedError) and issubclass(NotApplicableError, ValueError)
    with pytest.raises(NotImplementedError):
        with make("gpt2").tap_states([0]):
            pass


def test_ablation_site_units_follow_the_groups():
    model = make("mamba")
    g = model.blocks[0].mixer.groups
    site = AblationSite(0, g.units([1]), per_head=g.per_head)
    x = torch.ones(1, 2, g.width)
    out = site.put(x, 0.0)
    assert out[..., g.size:2 * g.size].abs().sum() == 0 and out.sum() == 2 * (g.width - g.size)
