"""Chunked implicit attention of diagonal-decay recurrences (models/kernels/decay_attention.py)
equals its direct twin: random inputs with weak and strong decay, long sequences, several chunk
sizes, L not a multiple of the chunk; Mamba's ``_alpha`` equals its direct reference formula and
rebuilds the scan from the hooks (tests/models/test_core.py) through the chunked path."""

from __future__ import annotations

import pytest
import torch

from seqlens.models.kernels.decay_attention import (SAFE_SPAN, decay_attention_chunked,
                                                    decay_attention_direct)
from seqlens.testing.tiny import make, tokens


def inputs(L: int, rate: float, seed: int, batch: tuple[int, ...] = (2, 3), n: int = 5):
    """q, k ~ N(0, 1) and a non-increasing cumulative log decay with steps in [−rate, 0]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, n, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, L, n, generator=g, dtype=torch.float64)
    S = (-rate * torch.rand(*batch, L, n, generator=g, dtype=torch.float64)).cumsum(-2)
    return q, k, S


@pytest.mark.parametrize("L,chunk,rate", [(1, 4, 1.0), (37, 8, 0.05), (64, 16, 3.0), (200, 32, 0.01),
                                          (300, 64, 2.0), (300, 7, 40.0), (50, 64, 0.5), (129, 1, 0.3)])
def test_chunked_equals_direct_float64(L: int, chunk: int, rate: float) -> None:
    q, k, S = inputs(L, rate, seed=L + chunk)
    ref = decay_attention_direct(q, k, S)
    got = decay_attention_chunked(q, k, S, chunk)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert got.triu(1).abs().max() == 0


@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_chunked_float32_within_rounding(chunk: int) -> None:
    """float32 q, k (float64 S): equal to the float64 direct form up to float32 rounding of the
    sum over n, over a long strongly decaying sequence (total decay ≫ float32's exp range)."""
    q, k, S = inputs(257, 1.5, seed=chunk)
    assert -S[..., -1, :].max() > 100  # exp(S_L − S_0) underflows float32: the split must not overflow
    ref = decay_attention_direct(q, k, S)
    got = decay_attention_chunked(q.float(), k.float(), S, chunk)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    scale = (q.abs()[..., :, None, :] * k.abs()[..., None, :, :]).sum(-1)  # bound on each |α| term sum
    assert ((got.double() - ref).abs() <= 1e-5 * scale + 1e-30).all()


def test_diagonal_split_recurses_past_safe_span() -> None:
    """A chunk whose decay spans more than SAFE_SPAN (here > 709 nats: e^span overflows even
    float64) inside it is split again, not overflowed."""
    q, k, S = inputs(16, 120.0, seed=3)
    assert (S[..., 0, :] - S[..., -1, :]).max() > 710
    ref = decay_attention_direct(q, k, S)
    got = decay_attention_chunked(q.float(), k.float(), S, 16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_broadcast_query_and_bad_arguments() -> None:
    q, k, S = inputs(20, 0.2, seed=1)
    shared = q[:, :1]  # one query per batch row, broadcast over the 3 channels (Mamba's C)
    torch.testing.assert_close(decay_attention_chunked(shared, k, S, 6),
                               decay_attention_direct(shared.expand_as(k), k, S), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="chunk"):
        decay_attention_chunked(q, k, S, 0)
    with pytest.raises(ValueError, match="trailing"):
        decay_attention_chunked(q[..., :3, :], k, S)


@pytest.mark.parametrize("chunk", [3, 8, 64])
def test_mamba_alpha_equals_direct_reference(chunk: int) -> None:
    model = make("mamba")
    with torch.no_grad():  # strong decay: large A and Δ on half the channels
        mixer = model.blocks[0].mixer
        mixer.A_log[: mixer.d_inner // 2] += 3.0
        x = model.mixer_input(tokens(2, 45), 0)
        p = mixer.ssm_inputs(x, None)
        p["delta"] = p["delta"] * 4
        for sl in (slice(None), slice(5, 17)):
            ref = mixer._alpha_reference(p, sl)
            torch.testing.assert_close(mixer._alpha(p, sl, chunk), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_gla_attention_matrix_chunked_equals_direct() -> None:
    """GLA / RetNet implicit attention: the chunked default equals the row-blocked direct form."""
    from seqlens.models.gla import gla_attention_matrix
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 70, 3, 8, generator=g, dtype=torch.float64) for _ in range(2))
    log_g = -3 * torch.rand(2, 70, 3, 8, generator=g, dtype=torch.float64)
    ref = gla_attention_matrix(q, k, log_g, chunk=None)
    for chunk in (1, 16, 64):
        torch.testing.assert_close(gla_attention_matrix(q, k, log_g, chunk=chunk), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [2**25, 5_000])  # whole groups; a few channels per call
def test_mamba_pattern_equals_group_mean_of_direct_alpha(budget: int) -> None:
    """``pattern`` sums a group's channels inside one chunked call ((d, n) as one contraction
    axis); it equals the mean over each group of the direct per-channel α."""
    model = make("mamba")
    with torch.no_grad():
        mixer = model.blocks[1].mixer
        mixer.A_log[::2] += 3.0  # strong decay on every other channel
        x = model.mixer_input(tokens(2, 70), 1)
        ref = mixer._alpha_reference(mixer.ssm_inputs(x, None), slice(None))  # [B, D, L, L]
        H = model.cfg.n_groups
        want = ref.view(2, H, -1, 70, 70).mean(2)
        torch.testing.assert_close(mixer.pattern(x, budget=budget), want, rtol=1e-5,
                                   atol=1e-6 * want.abs().max().item())
