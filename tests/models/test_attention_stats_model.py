"""``SeqModel.attention_stats``: per-query statistics of a model's attention layer agree with its
explicit pattern and its ``hook_z``, hooks that edit the pattern are honoured, and recurrent
mixers are refused."""

from __future__ import annotations

import pytest
import torch
from seqlens.testing.tiny import make, tokens

ATTENTION = ["gpt2", "llama", "neox", "fox"]


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("backend", ["chunked", "ref", "triton"])
def test_stats_match_the_explicit_pattern_and_hook_z(name, backend):
    model = make(name).eval()
    toks = tokens(2, 23, seed=3)
    _, cache = model.run_with_cache(toks)
    for layer in range(model.cfg.n_layers):
        st = model.attention_stats(toks, layer, sink_k=3, span=(5, 9), backend=backend)
        p = model.mixer_pattern(toks, layer).double()  # [B, H, L, L]
        assert st.backend == backend
        torch.testing.assert_close(st.max_prob.double(), p.amax(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.sink_mass.double(), p[..., :3].sum(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.span_mass.double(), p[..., 5:9].sum(-1), atol=1e-5, rtol=1e-5)
        entropy = -torch.special.xlogy(p, p).sum(-1)
        torch.testing.assert_close(st.entropy.double(), entropy, atol=1e-4, rtol=1e-4)
        assert (p.gather(-1, st.argmax[..., None]).squeeze(-1) >= p.amax(-1) - 1e-6).all()
        z = cache[f"blocks.{layer}.mixer.hook_z"]  # [B, L, H, dh]
        torch.testing.assert_close(st.out.transpose(1, 2), z, atol=1e-5, rtol=1e-4)


def test_pattern_hook_edits_are_honoured():
    model = make("llama").eval()
    toks = tokens(1, 17, seed=1)

    def to_first_key(pattern, hook):  # every query attends to key 0 only
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        return edited

    with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_pattern", to_first_key)]):
        st = model.attention_stats(toks, 1, sink_k=1)
    assert st.backend == "explicit"
    assert torch.allclose(st.sink_mass, torch.ones_like(st.sink_mass))
    assert (st.argmax == 0).all() and torch.allclose(st.entropy, torch.zeros_like(st.entropy))
    plain = model.attention_stats(toks, 1, sink_k=1)
    assert plain.backend == "chunked" and plain.sink_mass[..., 1:].max() < 0.99


@pytest.mark.parametrize("name", ["mamba", "gla", "mingru", "lstm"])
def test_recurrent_mixers_are_refused(name):
    model = make(name).eval()
    with pytest.raises(NotImplementedError, match="mixer_pattern"):
        model.attention_stats(tokens(1, 8), 0)
    with pytest.raises(ValueError, match="layer"):
        make("gpt2").attention_stats(tokens(1, 8), 5)
