"""RetNet's retention against the paper (Sun et al. 2023, §2) and torchscale's parallel form, in
float64 on small shapes: the xPos rotation Θ, the fixed multi-scale decays, the group norm and the
swish gate; the recurrent (step loop), chunked and streamed forms agree with the parallel one.

The references are written here from the paper's equations, in complex arithmetic (the paper's
notation), independently of models/gla.py's real-valued rotation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqlens.models import ModelConfig, build
from seqlens.models.gla import Retention, theta_shift

H, D_K, D_V = 4, 8, 16  # per head; the paper's value dim is twice the key dim


def rotary_retnet(**changes) -> torch.nn.Module:
    cfg = ModelConfig(arch="retnet", vocab_size=50, d_model=32, n_layers=2, n_heads=H, d_key=H * D_K,
                      d_value=H * D_V, norm="rmsnorm", mlp="gated", act="silu", positions="rotary")
    model = build(cfg.replace(**changes), seed=0).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a group-norm weight that is not all ones, so the test sees it
        for block in model.blocks:
            block.mixer.g_norm.weight.add_(0.3 * torch.randn(D_V, generator=g, dtype=torch.float64))
    return model


def paper_angles(d_k: int) -> torch.Tensor:
    """θ_i, i < d_k / 2, as torchscale's RetNetRelPos: 1 / 10000^linspace(0, 1, d_k / 2)."""
    return torch.tensor([10000.0 ** (-i / max(d_k // 2 - 1, 1)) for i in range(d_k // 2)], dtype=torch.float64)


def complex_pairs(x: torch.Tensor) -> torch.Tensor:
    """Features (2i, 2i+1) as the complex number x_{2i} + i x_{2i+1}."""
    return torch.complex(x[..., 0::2], x[..., 1::2])


def paper_scores(m: Retention, x: torch.Tensor) -> torch.Tensor:
    """``(Q Θ)(K Θ̄)ᵀ ⊙ D`` per head ``[B, H, L, L]`` (paper eq. for the parallel form; real part,
    q scaled by d_k^-0.5), ``D_nm = γ_h^{n−m}`` for n ≥ m, γ_h = 1 − 2^(−5−h)."""
    B, L, _ = x.shape
    q = complex_pairs((x @ m.q_proj.weight.T).view(B, L, H, D_K)) * D_K ** -0.5
    k = complex_pairs((x @ m.k_proj.weight.T).view(B, L, H, D_K))
    n = torch.arange(L, dtype=torch.float64)
    phase = torch.polar(torch.ones(L, D_K // 2, dtype=torch.float64), n[:, None] * paper_angles(D_K))
    qk = torch.einsum("bnhi,bmhi->bhnm", q * phase[None, :, None], (k * phase[None, :, None]).conj()).real
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))
    dist = n[:, None] - n[None, :]
    decay = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp(min=0), torch.zeros(()))
    return qk * decay


def msr_output(m: Retention, x: torch.Tensor, retained: torch.Tensor) -> torch.Tensor:
    """``MSR(X) = (swish(X W_G) ⊙ GroupNorm_h(heads)) W_O`` with the group norm an RMS norm per head
    with a weight (our documented choice, fla's), eps from the config."""
    B, L, _ = x.shape
    y = retained * torch.rsqrt(retained.pow(2).mean(-1, keepdim=True) + m.cfg.norm_eps) * m.g_norm.weight
    return (F.silu(x @ m.g_proj.weight.T) * y.reshape(B, L, H * D_V)) @ m.o_proj.weight.T


def mixer_input(L: int = 21, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, L, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend,chunk", [("ref", 16), ("chunked", 4), ("chunked", 64)])
def test_retention_equals_the_papers_parallel_form(backend, chunk):
    """hook_z and the mixer output of every backend (recurrent step loop, chunked at two sizes)
    equal the paper's parallel form with Θ, D, group norm and swish gate."""
    m = rotary_retnet().blocks[0].mixer
    m.set_backend(backend)
    m.chunk_size = chunk
    x = mixer_input()
    B, L, _ = x.shape
    retained = torch.einsum("bhnm,bmhd->bnhd", paper_scores(m, x), (x @ m.v_proj.weight.T).view(B, L, H, D_V))
    zs = []
    m.hook_z.add_hook(lambda z, hook: zs.append(z))
    out, _ = m(x)
    m.hook_z.remove_hooks()
    torch.testing.assert_close(zs[0], retained, atol=1e-12, rtol=1e-10)
    # RMSNorm normalises in float32 even in a float64 model (models/base.py), hence the tolerance
    torch.testing.assert_close(out, msr_output(m, x, retained), atol=1e-6, rtol=1e-5)


def test_pattern_is_the_papers_retention_matrix():
    m = rotary_retnet().blocks[1].mixer
    x = mixer_input(13, seed=3)
    torch.testing.assert_close(m.pattern(x), paper_scores(m, x), atol=1e-12, rtol=1e-10)


def torchscale_parallel(m: Retention, x: torch.Tensor) -> torch.Tensor:
    """torchscale's MultiScaleRetention.parallel_forward with RetNetRelPos's mask (real-valued
    theta_shift, k scaled instead of q, decay rows / sqrt(row sum), scores / abs-sum clamped to
    [1, 5e4]), then our group norm, gate and output projection."""
    B, L, _ = x.shape
    q = (x @ m.q_proj.weight.T).view(B, L, H, D_K).transpose(1, 2)
    k = (x @ m.k_proj.weight.T * D_K ** -0.5).view(B, L, H, D_K).transpose(1, 2)
    angle = (1.0 / 10000 ** torch.linspace(0, 1, D_K // 2, dtype=torch.float64)).unsqueeze(-1).repeat(1, 2).flatten()
    index = torch.arange(L, dtype=torch.float64)
    sin, cos = torch.sin(index[:, None] * angle[None]), torch.cos(index[:, None] * angle[None])

    def shift(t):  # theta_shift(x, sin, cos) with rotate_every_two
        return t * cos + torch.stack((-t[..., 1::2], t[..., ::2]), dim=-1).flatten(-2) * sin

    decay = torch.log(1 - 2 ** (-5 - torch.arange(H, dtype=torch.float64)))
    mask = torch.masked_fill(index[:, None] - index[None, :], ~torch.ones(L, L).tril().bool(), float("inf"))
    mask = torch.nan_to_num(torch.exp(mask * decay[:, None, None]))
    mask = mask / mask.sum(dim=-1, keepdim=True).sqrt()
    qk = shift(q) @ shift(k).transpose(-1, -2) * mask
    qk = qk / qk.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1, max=5e4)
    out = (qk @ (x @ m.v_proj.weight.T).view(B, L, H, D_V).transpose(1, 2)).transpose(1, 2)
    return msr_output(m, x, out)


def test_torchscale_normalisations_are_removed_by_the_group_norm():
    """torchscale divides each decay row and each score row by a per-(head, row) scalar; the group
    norm is scale invariant, so with eps → 0 the mixer equals torchscale's parallel form (we skip
    the normalisations: they change only the magnitude the group norm sees)."""
    m = rotary_retnet(norm_eps=1e-30).blocks[0].mixer
    x = mixer_input(33, seed=5)
    torch.testing.assert_close(m(x)[0], torchscale_parallel(m, x), atol=1e-6, rtol=1e-5)  # float32 norm


def test_theta_shift_multiplies_pairs_by_e_to_the_i_n_theta():
    x = torch.randn(1, 6, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([0, 1, 2, 7, 100, 5000])
    phase = torch.polar(torch.ones(6, 4, dtype=torch.float64), pos.double()[:, None] * paper_angles(8))
    expected = complex_pairs(x) * phase[None, :, None]
    got = complex_pairs(theta_shift(x, pos))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    # θ_0 = 1 rad per position (the fast pair that lets a head tell the previous byte from older ones)
    assert paper_angles(8)[0] == 1.0 and math.isclose(paper_angles(8)[-1].item(), 1e-4)


def test_streaming_and_left_padding_agree_with_one_forward():
    """The rotation reads absolute positions: chunks streamed with the state (pos carried) and a
    left-padded row (real tokens shifted) give the logits of one plain forward."""
    model = rotary_retnet()
    toks = torch.randint(0, 50, (2, 23), generator=torch.Generator().manual_seed(2))
    full = model(toks)
    state, outs = model.init_state(2), []
    for a, b in ((0, 5), (5, 6), (6, 23)):
        logits, state = model.forward_chunk(toks[:, a:b], state)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)  # float32 state, norms
    padded = torch.cat([torch.zeros(2, 4, dtype=torch.long), toks], 1)
    mask = torch.cat([torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 23, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 4:], full, atol=1e-5, rtol=1e-4)


def test_without_rotation_positions_enter_only_through_the_decay():
    """The shipped text-retnet's config (positions "learned", ignored by recurrent models): no
    rotation hooks, and the scores are γ^{t−s} q_t·k_s of the unrotated projections."""
    model = rotary_retnet(positions="learned")
    m = model.blocks[0].mixer
    assert not m.rotary and "blocks.0.mixer.hook_rot_q" not in model.hook_dict
    x = mixer_input(9)
    q, k = ((x @ w.T).view(2, 9, H, D_K) for w in (m.q_proj.weight, m.k_proj.weight))
    t = torch.arange(9)
    decay = (m.gamma[:, None, None] ** (t[:, None] - t[None, :]).clamp(min=0).double()).tril()
    torch.testing.assert_close(m.pattern(x), torch.einsum("bthi,bshi->bhts", q * D_K ** -0.5, k) * decay)


def test_rotation_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="positions.*retnet.*'gla'"):
        ModelConfig(arch="gla", d_model=32, n_heads=4, positions="rotary")
    with pytest.raises(ValueError, match="positions.*odd"):
        ModelConfig(arch="retnet", d_model=32, n_heads=4, d_key=12, positions="rotary")
