"""Outlier channels (probes/outliers.py): a planted outlier channel is found in every layer reading
the residual stream and no other channel is; zeroing it changes the loss, zeroing nothing changes
nothing; m_c equals the max |input| read off hooks."""

import dataclasses

import pytest
import torch
from seqlens.testing.tiny import CONFIGS, randomize, tokens

from seqlens.models import build
from seqlens.probes.outliers import (
    OutlierResult,
    default_batch,
    find_outliers,
    input_max_abs,
    linear_layers,
    outlier_channels,
    zero_input_channels,
)

WIDE = 64  # > n_sigma² + 1 = 37 channels: a single outlier can pass μ + 6σ (see the module docstring)
PLANTED = 5


def wide(name: str, seed: int = 0):
    return randomize(build(dataclasses.replace(CONFIGS[name], d_model=WIDE), seed=seed), seed)


def planted(name: str):
    """A tiny model whose embedding has a huge constant in column PLANTED: every residual-stream
    reader sees that channel as an outlier (massive activation)."""
    model = wide(name)
    with torch.no_grad():
        model.embed.weight[:, PLANTED] += 50.0
    return model


@pytest.mark.parametrize("name", ["llama", "mamba", "lstm", "gla"])
def test_planted_channel_found_and_no_other(name):
    model = planted(name)
    res = outlier_channels(model, tokens(4, 32), progress=False)
    resid = set(res.resid_layers)
    # the readers of norm outputs: every block's ln1 / ln2 readers and the unembedding
    assert "unembed" in resid and any(l.startswith("blocks.1.") for l in resid)
    for layer, out in zip(res.layers, res.outliers):
        assert out == ([PLANTED] if layer in resid else []), layer
    assert res.n_outliers == len(resid)
    assert res.resid_counts.nonzero().flatten().tolist() == [PLANTED]
    assert res.consistency == 1.0 and bool((res.jaccard == 1).all())


def test_zeroing_planted_channel_changes_loss_and_nothing_changes_nothing():
    model = planted("llama")
    with torch.no_grad():  # make the logits depend on the planted channel
        g = torch.Generator().manual_seed(1)
        model.unembed.weight[:, PLANTED] = 5 * torch.randn(model.cfg.vocab_size, generator=g)
    res = outlier_channels(model, tokens(4, 32), progress=False)
    for layer, out, loss in zip(res.layers, res.outliers, res.loss_zeroed):
        if out:
            assert loss != res.loss_base, layer  # measured by a forward pass
        else:
            assert loss == res.loss_base
    delta = dict(zip(res.layers, res.to_frame()["delta_loss"]))
    assert abs(delta["unembed"]) > 0.1
    assert abs(res.loss_all - res.loss_base) > 0.1
    # measured, not assumed: zeroing no channel gives bit-identical logits
    toks = tokens(2, 16)
    with torch.no_grad():
        base = model(toks)
        with zero_input_channels(model, {n: [] for n in linear_layers(model)}):
            same = model(toks)
        with zero_input_channels(model, res.outlier_map()):
            other = model(toks)
    assert torch.equal(base, same)
    assert not torch.allclose(base, other)
    assert model(toks).equal(base)  # hooks removed on exit


def test_zeroed_channel_is_zero_at_the_layer_input():
    model = wide("mamba")
    seen = {}
    with torch.no_grad(), zero_input_channels(model, {"unembed": [3, 7]}):
        # pre-hooks run in registration order: this one sees the zeroed input
        h = model.unembed.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0].clone()))
        model(tokens(1, 8))
    h.remove()
    assert bool((seen["x"][..., [3, 7]] == 0).all()) and bool((seen["x"][..., 0] != 0).all())


def test_max_abs_matches_hooked_inputs():
    model = wide("lstm")
    toks = tokens(2, 12)
    m, reads = input_max_abs(model, toks)
    _, cache = model.run_with_cache(toks)
    x = cache["ln_final.hook_out"]
    assert torch.equal(m["unembed"], x.abs().amax((0, 1)).float())
    assert reads["unembed"] == "ln_final" and reads["blocks.0.mixer.in_proj"] == "blocks.0.ln1"
    # the LSTM's hidden_proj runs once per step on h_{t-1} (h_{-1} = 0): all calls pooled
    h = cache["blocks.0.mixer.hook_z"][:, :-1]
    assert torch.allclose(m["blocks.0.mixer.hidden_proj"], h.abs().amax((0, 1)).float())
    assert reads["blocks.0.mixer.hidden_proj"] is None and reads["blocks.0.mlp.fc_out"] is None


def test_find_outliers_rule():
    m = torch.ones(100)
    m[7] = 100.0
    assert find_outliers(m, 6.0)[0] == [7]
    narrow = torch.ones(10)
    narrow[3] = 1e6  # z ≤ √(n − 1) = 3 < 6: a 10-channel layer cannot have a 6σ outlier
    assert find_outliers(narrow, 6.0)[0] == []
    assert find_outliers(narrow, 2.0)[0] == [3]
    out, mu, sigma = find_outliers(torch.tensor([1.0, 3.0]), 6.0)
    assert out == [] and mu == 2.0 and sigma == 1.0  # population σ


def test_default_data():
    model = wide("mamba")
    batch, info = default_batch(model)
    assert info["data"] == "uniform_random_tokens" and batch.tokens.shape == (16, 128)
    assert torch.equal(batch.targets[:, :-1], batch.tokens[:, 1:]) and not batch.loss_mask[:, -1].any()
    byte = build(dataclasses.replace(CONFIGS["mamba"], vocab_size=256), seed=0)
    batch, info = default_batch(byte, batch=2, seq_len=24)
    assert info["data"].startswith("stdlib:val") and batch.tokens.shape == (2, 24)
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1])


def test_bad_input():
    model = wide("mamba")
    with pytest.raises(ValueError, match="n_sigma"):
        outlier_channels(model, tokens(1, 8), n_sigma=0, progress=False)
    with pytest.raises(ValueError, match="tokens"):
        outlier_channels(model, torch.rand(1, 8), progress=False)
    with pytest.raises(ValueError, match="tokens"):
        outlier_channels(model, torch.full((1, 8), 1000), progress=False)
    with pytest.raises(ValueError, match="tokens"):
        outlier_channels(model, tokens(1, 1), progress=False)
    with pytest.raises(ValueError, match="channels"):
        with zero_input_channels(model, {"nope": [0]}):
            pass
    with pytest.raises(ValueError, match="channels"):
        with zero_input_channels(model, {"unembed": [WIDE]}):
            pass


def test_result_views_round_trip():
    res = outlier_channels(planted("mamba"), tokens(2, 16), progress=False)
    df = res.to_frame()
    assert list(df["layer"]) == res.layers and len(df) == len(linear_layers(planted("mamba")))
    assert {"d_in", "n_outliers", "channels", "mu", "sigma", "max", "delta_loss"} <= set(df.columns)
    assert df.loc[df["layer"] == "unembed", "channels"].item() == [PLANTED]
    res.figure()
    res.figure(layer="unembed")
    with pytest.raises(ValueError, match="layer"):
        res.figure(layer="nope")
    back = OutlierResult.from_json(res.to_json())
    assert back.outliers == res.outliers and back.loss_all == res.loss_all
    assert all(torch.equal(a, b) for a, b in zip(back.max_abs, res.max_abs))


@pytest.mark.slow
def test_zoo_text_mamba():
    import seqlens

    res = outlier_channels(seqlens.load("text-mamba"), progress=False)
    assert res.settings["data"] == "recipe:text-mamba:eval[0]"
    assert 0 < res.fraction < 0.01  # Mamba-PTQ: < 1% of channels
    assert res.loss_all > res.loss_base
