"""Simulated quantisation: the rounding error bound, an outlier channel planted by hand that ruins
per-tensor 8-bit activations unless it is kept in full precision, exact weight restoration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seqlens
from seqlens.probes.quantize import fake_quant, ptq_loss, quantized


def test_fake_quant_error_is_at_most_half_a_step():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    for bits in (4, 8):
        step = x.abs().max() / (2 ** (bits - 1) - 1)
        assert (fake_quant(x, bits) - x).abs().max() <= step / 2 + 1e-6
        rows = x.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((fake_quant(x, bits, dim=1) - x).abs() <= rows / 2 + 1e-6).all()
    assert torch.equal(fake_quant(torch.zeros(3), 8), torch.zeros(3))
    with pytest.raises(ValueError, match="^bits"):
        fake_quant(x, 1)


def planted() -> tuple[nn.Module, torch.Tensor]:
    """One linear layer and inputs whose channel 0 is 1000x larger than the others."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16, bias=False))
    x = torch.randn(256, 64)
    x[:, 0] *= 1000.0
    return net, x


def test_an_outlier_channel_ruins_8_bit_activations_unless_kept():
    net, x = planted()
    exact = net(x).detach()
    ref = exact - x[:, :1] @ net[0].weight[:, :1].T.detach()  # the part the ordinary channels carry
    err = lambda y: float(((y - exact).norm() / ref.norm()))  # noqa: E731
    with quantized(net, 8, weights=False):
        plain = err(net(x))
    with quantized(net, 8, weights=False, keep={"0": [0]}):
        kept = err(net(x))
    # scale = 1000·max|x_0|/127: the other channels (|x| ~ 1) round to 0 or ±1 step
    assert plain > 0.5 and kept < 0.02, (plain, kept)


def test_weights_are_restored_bit_for_bit_and_bad_keep_is_named():
    net, x = planted()
    before = net[0].weight.detach().clone()
    with quantized(net, 4):
        assert not torch.equal(net[0].weight, before)
    assert torch.equal(net[0].weight, before)
    with pytest.raises(ValueError, match="^keep"):
        with quantized(net, 8, keep={"nope": [0]}):
            pass
    with pytest.raises(ValueError, match="^keep"):
        with quantized(net, 8, keep={"0": [64]}):
            pass
    assert torch.equal(net[0].weight, before) and not net[0]._forward_pre_hooks


def test_ptq_loss_on_a_zoo_organism_16_bits_is_lossless():
    from seqlens.corpus import StdlibCorpus
    from seqlens.probes import outlier_channels

    model = seqlens.load("text-mamba")
    tokens = StdlibCorpus().eval_windows(64, "val", max_windows=2)
    outliers = outlier_channels(model, tokens=tokens, progress=False)
    r = ptq_loss(model, bits=16, tokens=tokens, outliers=outliers)
    assert set(r.loss) == {"fp", "quant", "kept"}
    assert abs(r.loss["quant"] - r.loss["fp"]) < 1e-2 and abs(r.loss["kept"] - r.loss["fp"]) < 1e-2
    r4 = ptq_loss(model, bits=4, tokens=tokens, outliers=outliers)
    assert r4.loss["quant"] > r4.loss["fp"]  # 4 bits per tensor cannot be free
    assert r4.to_frame().shape == (3, 3)
