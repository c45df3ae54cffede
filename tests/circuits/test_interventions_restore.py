"""Every intervention the dashboard uses leaves the model exactly as it found it, also when the
block (or a forward inside it) raises: nothing attached afterwards (``attached_hooks``), the same
logits as before, no mitigation still registered. The app relies on this to reuse a session's model
copy after a failed or interrupted run (issue 15 item 3)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from seqlens.circuits import ablate_heads, calibrate_sinks
from seqlens.models.hooks import attached_hooks
from seqlens.probes import collapse
from seqlens.testing.tiny import make, tokens


class Boom(Exception):
    pass


INTERVENTIONS = {
    "ablate_zero": (["attn_only", "mamba"], lambda m: ablate_heads(m, [(0, 0), (1, 2)])),
    "ablate_mean_guarded": (["attn_only"], lambda m: ablate_heads(m, [(0, 1)], mode="mean")),
    "ablate_uniform": (["attn_only"], lambda m: ablate_heads(m, [(1, 0)], mode="uniform")),
    "calibrate_sinks": (["attn_only", "fox"], lambda m: calibrate_sinks(m, [(0, 0), (1, 1)], tau=0.05, beta=0.2)),
    "tap_states": (["mamba", "mingru"], lambda m: m.tap_states([3, 7])),
    "forget_more": (["mamba", "gla", "mingru", "lstm"], lambda m: collapse.forget_more(m, 0.5, 2.0)),
    "normalize_states": (["mamba", "gla"], lambda m: collapse.normalize_states(m, tau=0.5)),
    "state_window": (["mamba", "attn_only"], lambda m: collapse.state_window(m, 8)),
}
CASES = [(what, arch) for what, (archs, _) in INTERVENTIONS.items() for arch in archs]


def snapshot(model, x):
    with torch.no_grad():
        return model(x).clone(), [s.clone() for s in model.stream(x, chunk_size=4, return_logits=True).logits]


def assert_restored(model, x, before) -> None:
    assert attached_hooks(model) == []
    assert not collapse._ACTIVE.get(model)
    after = snapshot(model, x)
    assert torch.equal(after[0], before[0]) and all(torch.equal(a, b) for a, b in zip(after[1], before[1]))


@pytest.mark.parametrize("what, arch", CASES)
def test_intervention_restores_the_model_when_the_block_raises(what, arch):
    model, x = make(arch), tokens(2, 12)
    before = snapshot(model, x)
    with pytest.raises(Boom):
        with INTERVENTIONS[what][1](model):
            with torch.no_grad():
                model(x)
            assert attached_hooks(model)  # the intervention is attached inside the block ...
            raise Boom
    assert_restored(model, x, before)  # ... and gone after it, exception or not


@pytest.mark.parametrize("what, arch", [("ablate_zero", "attn_only"), ("forget_more", "mamba"),
                                        ("calibrate_sinks", "attn_only"), ("state_window", "mamba")])
def test_intervention_restores_the_model_when_a_forward_raises(what, arch):
    """A hook of someone else raising mid-forward (the app's stop-forward hook, an interrupted run)."""
    model, x = make(arch), tokens(2, 12)
    before = snapshot(model, x)

    def boom(t, hook):
        raise Boom

    with pytest.raises(Boom):
        with INTERVENTIONS[what][1](model), model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", boom)]):
            model(x)
    assert_restored(model, x, before)


def test_stacked_mitigations_restore_the_model():
    model, x = make("mamba"), tokens(2, 12)
    before = snapshot(model, x)
    with pytest.raises(Boom):
        with contextlib.ExitStack() as stack:
            for what in ("normalize_states", "forget_more", "state_window", "tap_states"):
                stack.enter_context(INTERVENTIONS[what][1](model))
            with torch.no_grad():
                model.stream(x, chunk_size=4, return_logits=False)
            raise Boom
    assert_restored(model, x, before)


def test_refused_intervention_attaches_nothing():
    model = make("mamba")
    with pytest.raises(NotImplementedError):
        with calibrate_sinks(model, [(0, 0)]):
            pass
    with pytest.raises(ValueError):
        with ablate_heads(model, [(0, 99)]):
            pass
    with pytest.raises(ValueError):
        with collapse.forget_more(model, b_scale=-1.0):
            pass
    assert attached_hooks(model) == []
