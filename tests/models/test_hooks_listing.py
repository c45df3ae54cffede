"""seqlens.models.hooks: the hook listing that `seqlens hooks` and the dashboard share, and
`attached_hooks`, which finds anything left attached to a model."""

from __future__ import annotations

import pytest
import torch

from seqlens.models.hooks import attached_hooks, default_taps, list_hooks, random_tokens, record_hooks
from seqlens.testing.tiny import CONFIGS, make


@pytest.mark.parametrize("name", ["gpt2", "mamba"])
def test_list_hooks_is_what_seqlens_hooks_prints(name):
    from seqlens import cli

    model = make(name)
    tokens = cli.random_tokens(model, 2, 6, 3)
    taps = [5] if cli.supports_taps(model) else None
    assert cli.collect_hooks(model, tokens, taps) == record_hooks(model, tokens, taps)
    assert torch.equal(random_tokens(model, 2, 6, 3), tokens)  # the same seeded input
    listed = list_hooks(model, seq_len=6, batch=2, seed=3)
    assert listed == record_hooks(model, tokens, default_taps(model, 6))[0]
    names = [n for n, _ in listed]
    assert names[0] == "hook_embed" and ("blocks.1.mixer.hook_state" in names) == (name == "mamba")
    assert dict(listed)["blocks.0.hook_resid_pre"] == [2, 6, CONFIGS[name].d_model]
    assert attached_hooks(model) == []  # listing leaves nothing behind


def test_list_hooks_bad_input():
    model = make("gpt2")
    for kw, word in [({"seq_len": 0}, "seq_len"), ({"batch": -1}, "batch"), ({"seq_len": True}, "seq_len"),
                     ({"taps": "first"}, "taps")]:
        with pytest.raises(ValueError, match=word):
            list_hooks(model, **kw)


def test_attached_hooks_finds_what_is_left_behind():
    model = make("mamba")
    assert attached_hooks(model) == []
    handle = model.blocks[0].mixer.hook_delta.register_forward_hook(lambda *a: None)
    assert attached_hooks(model) == ["blocks.0.mixer.hook_delta: forward_hooks"]
    handle.remove()
    model.blocks[1].mixer.tap_positions = torch.tensor([1])
    assert attached_hooks(model) == ["blocks.1.mixer: tap_positions"]
    model.blocks[1].mixer.tap_positions = None
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: t)
    assert attached_hooks(model) == ["blocks.0.hook_resid_pre: forward_hooks"]
    model.reset_hooks()
    assert attached_hooks(model) == []
