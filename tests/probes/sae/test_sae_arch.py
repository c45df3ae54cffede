"""Encode / decode semantics of the five SAE types against hand-written definitions."""

import pytest
import torch

from sae_helpers import random_sae
from seqlens.probes import sae as S

X = torch.randn(32, 12, generator=torch.Generator().manual_seed(3)) * 2


@pytest.mark.parametrize("arch", S.ARCHITECTURES)
def test_forward_is_decode_of_encode_and_decode_is_affine(arch):
    s = random_sae(arch)
    f = s.encode(X)
    assert f.shape == (32, 40)
    assert (f >= 0).all()  # every architecture's codes are non-negative
    torch.testing.assert_close(s(X), s.decode(f))
    b = s.b_dec if (arch != "matching_pursuit" or s.cfg.apply_b_dec_to_input) else 0
    torch.testing.assert_close(s.decode(f), f @ s.W_dec + b)
    # leading dimensions are kept: [B, L, d_in] encodes row by row
    torch.testing.assert_close(s.encode(X.reshape(4, 8, 12)).reshape(32, 40), f)


def test_standard_is_relu_of_centred_affine_map():
    s = random_sae("standard")
    torch.testing.assert_close(s.encode(X), torch.relu((X - s.b_dec) @ s.W_enc + s.b_enc))
    s.cfg.apply_b_dec_to_input = False
    torch.testing.assert_close(s.encode(X), torch.relu(X @ s.W_enc + s.b_enc))


def test_topk_keeps_the_k_largest_preactivations():
    s = random_sae("topk", k=5)
    z = (X - s.b_dec) @ s.W_enc + s.b_enc
    f = s.encode(X)
    for i in range(X.shape[0]):
        top = set(torch.topk(z[i], 5).indices.tolist())
        support = set(torch.nonzero(f[i]).flatten().tolist())
        assert support == {j for j in top if z[i, j] > 0}
        torch.testing.assert_close(f[i, sorted(support)], z[i, sorted(support)])
    assert int((f > 0).sum(-1).max()) <= 5


def test_topk_rescale_by_decoder_norm_is_topk_of_a_unit_norm_decoder():
    s = random_sae("topk", k=5, rescale_acts_by_decoder_norm=True)
    norms = s.W_dec.norm(dim=-1)
    unit = random_sae("topk", k=5)
    with torch.no_grad():  # fold the norms: the same SAE written with a unit-norm decoder
        unit.W_enc.copy_(s.W_enc * norms)
        unit.b_enc.copy_(s.b_enc * norms)
        unit.W_dec.copy_(s.W_dec / norms[:, None])
        unit.b_dec.copy_(s.b_dec)
    torch.testing.assert_close(s(X), unit(X))
    torch.testing.assert_close(s.encode(X), unit.encode(X))


def test_jumprelu_passes_exactly_the_preactivations_above_threshold():
    s = random_sae("jumprelu")
    z = (X - s.b_dec) @ s.W_enc + s.b_enc
    f = s.encode(X).detach()
    torch.testing.assert_close(f, torch.where(z > s.threshold, z, torch.zeros_like(z)))
    # a code just above its threshold jumps from 0 to the threshold's value: no small codes exist
    assert float(f[f > 0].min()) > float(s.threshold.detach().min())


def _mp_loop(x, D, steps):
    """Matching pursuit written out sample by sample (docs/methods.md §8)."""
    codes = torch.zeros(x.shape[0], D.shape[0])
    for n in range(x.shape[0]):
        r = x[n].clone()
        for _ in range(steps):
            c = torch.relu(D @ r)
            j = int(torch.argmax(c))
            codes[n, j] += c[j]
            r = r - c[j] * D[j]
    return codes


def test_matching_pursuit_equals_a_direct_loop():
    s = random_sae("matching_pursuit", max_iterations=6)
    torch.testing.assert_close(s.encode(X), _mp_loop(X - s.b_dec, s.W_dec.detach(), 6), atol=1e-5, rtol=1e-5)
    assert int((s.encode(X) > 0).sum(-1).max()) <= 6
    # W_enc is the decoder's transpose (tied), and residual norms never grow
    assert torch.equal(s.W_enc, s.W_dec.T)
    assert ((X - s(X)).norm(dim=-1) <= (X - s.b_dec).norm(dim=-1) + 1e-5).all()


def test_matching_pursuit_stops_early_on_duplicate_support_or_small_residual():
    s = random_sae("matching_pursuit", max_iterations=30, stop_on_duplicate_support=True)
    full = random_sae("matching_pursuit", max_iterations=30)
    assert (s.encode(X) > 0).sum(-1).float().mean() <= (full.encode(X) > 0).sum(-1).float().mean()
    s = random_sae("matching_pursuit", max_iterations=200, residual_threshold=1.0)
    r = X - s(X)
    assert (r.norm(dim=-1) < 1.0).all()


def test_bad_inputs_get_clear_errors():
    s = random_sae("topk")
    with pytest.raises(ValueError, match="x: expected activations"):
        s.encode(torch.randn(3, 7))
    with pytest.raises(ValueError, match="f: expected codes"):
        s.decode(torch.randn(3, 7))
    with pytest.raises(ValueError, match="architecture"):
        S.SAEConfig(architecture="gated", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="k: expected"):
        S.SAEConfig(architecture="topk", d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="d_sae"):
        S.SAEConfig(architecture="standard", d_in=4, d_sae=0)
