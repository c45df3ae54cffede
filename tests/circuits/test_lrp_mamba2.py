"""MambaLRP on Mamba-2 against an explicit, module-by-module LRP written out by hand, plus
conservation layer by layer and the model left untouched (the generic LRP tests in test_lrp.py
also run on ``mamba2``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqlens.circuits import lrp
from seqlens.models import ModelConfig, build

from lrp_by_hand import linear_back, rms


def tiny(n_layers: int = 1, groups: int = 2) -> torch.nn.Module:
    cfg = ModelConfig(arch="mamba2", d_model=16, n_layers=n_layers, vocab_size=64, n_heads=4, n_bc_groups=groups,
                      d_state=4, norm="rmsnorm", chunk_size=4)
    model = build(cfg, seed=0)
    with torch.no_grad():  # conservation needs a bias-free network (dt_bias included)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        mix = model.blocks[0].mixer
        mix.out_proj.weight.mul_(30)  # the mixer, not the residual path, carries most of the logit
        mix.in_proj.weight[-mix.n_heads:].add_(1.0)  # Δ of order 1: real decay across positions
    return model


def tokens(L: int = 7) -> torch.Tensor:
    return torch.randint(0, 64, (1, L), generator=torch.Generator().manual_seed(0))


def hand_mamba2lrp(model, toks: torch.Tensor, position: int) -> torch.Tensor:
    """Explicit MambaLRP of a 1-layer Mamba-2 in float64 with relevance messages: with Δ, B, C
    constants the scan is the linear map ``y_t = Σ_s M[t, s, h] x_s`` (M by loops: ``(C_t·B_s)
    exp(Σ_{k=s+1..t} Δ_k A_h) Δ_s``, plus D_h on the diagonal), LRP-0 through it, the causal conv
    and every linear map; identity rule on both SiLUs; uniform rule on ``y ⊙ SiLU(z)``; the gated
    norm with its rms constant is element-wise linear (relevance unchanged)."""
    mix = model.blocks[0].mixer
    W = {k: v.detach().double() for k, v in mix.state_dict().items()}
    D, N, H, G, K = mix.d_inner, mix.d_state, mix.n_heads, mix.n_bc_groups, mix.cfg.d_conv
    P, GN = D // H, G * N
    e = model.embed.weight[toks[0]].double()
    L = e.shape[0]


    x1 = rms(e, model.blocks[0].ln1)
    Win = W["in_proj.weight"]
    z, xs, b_in, c_in, dt = (x1 @ Win.T).split([D, D, GN, GN, H], dim=-1)
    xbc = torch.cat([xs, b_in, c_in], -1)
    w = W["conv1d.weight"][:, 0]  # [conv_dim, K]
    padded = torch.cat([torch.zeros(K - 1, xbc.shape[1], dtype=e.dtype), xbc])
    conv = torch.stack([(padded[t:t + K] * w.T).sum(0) for t in range(L)])
    act = F.silu(conv)
    u = act[:, :D].view(L, H, P)
    Bm, Cm = act[:, D:D + GN].view(L, G, N), act[:, D + GN:].view(L, G, N)
    delta = F.softplus(dt + W["dt_bias"])
    A = -torch.exp(W["A_log"])
    M = torch.zeros(L, L, H, dtype=e.dtype)
    for t in range(L):
        for s in range(t + 1):
            for h in range(H):
                g = h // (H // G)
                M[t, s, h] = (Cm[t, g] @ Bm[s, g]) * torch.exp(delta[s + 1:t + 1, h].sum() * A[h]) * delta[s, h]
        M[t, t] += W["D"]
    y = torch.einsum("tsh,shp->thp", M, u).reshape(L, D)
    p = y * F.silu(z)
    scale = (p.view(L, G, -1).pow(2).mean(-1, keepdim=True) + mix.norm.eps).sqrt()
    normed = W["norm.weight"] * (p.view(L, G, -1) / scale).reshape(L, D)
    mixed = normed @ W["out_proj.weight"].T
    r = e + mixed
    f = rms(r, model.ln_final)
    tgt = int((f @ model.unembed.weight.double().T)[position].argmax())
    R_r = torch.zeros_like(r)
    R_r[position] = f[position] * model.unembed.weight.double()[tgt]
    R_e, R_mixed = R_r * e / r, R_r * mixed / r
    R_p = linear_back(normed, W["out_proj.weight"], R_mixed)  # norm: relevance unchanged
    R_y, R_z = (R_p / 2).view(L, H, P), R_p / 2  # uniform rule on y ⊙ SiLU(z); identity rule on SiLU
    R_u = torch.einsum("tsh,shp,thp->shp", M, u, R_y / y.view(L, H, P)).reshape(L, D)
    share = torch.zeros(L, D, dtype=e.dtype)  # LRP-0 through the causal depthwise conv (x channels)
    for t in range(L):
        for k in range(K):
            s_ = t - (K - 1) + k
            if s_ >= 0:
                share[s_] += w[:D, k] * xs[s_] / conv[t, :D] * R_u[t]
    R_x1 = linear_back(x1, Win[D:2 * D], share) + linear_back(x1, Win[:D], R_z)
    return (R_e + R_x1).sum(-1)


def test_mambalrp_on_mamba2_equals_explicit_mambalrp():
    model = tiny()
    toks = tokens()
    r = lrp.attribute(model, toks, position=6)
    assert r.method == "mambalrp"
    assert r.relevance[0, :6].abs().sum() > 0.1 * r.relevance[0].abs().sum()  # earlier tokens matter
    with torch.no_grad():
        expected = hand_mamba2lrp(model, toks, position=6).float()
    assert torch.allclose(r.relevance[0], expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())), \
        (r.relevance, expected)


def test_layerwise_conservation_and_model_untouched():
    model = tiny(n_layers=2, groups=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(tokens(9))
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    r = lrp.attribute(model, tokens(9), hooks=names)
    assert torch.allclose(r.conservation, torch.ones(1), rtol=0, atol=1e-4), r.conservation
    for name in names:
        assert torch.allclose(r.hooks[name].sum(-1), r.logit, rtol=1e-4, atol=1e-5), name
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert torch.equal(model(tokens(9)), out)


def test_mambalrp_on_the_mamba2_organism():
    """The zoo's mqar-mamba2 (biases and all, so no exact conservation): MambaLRP runs through
    every layer and gives finite relevance at every input position of an MQAR evaluation row."""
    import seqlens
    from seqlens.tasks import get_batch

    model = seqlens.load("mqar-mamba2")
    toks = get_batch(model.recipe, 0, split="eval").tokens[:1]
    r = lrp.attribute(model, toks, position=toks.shape[1] - 1)
    assert r.method == "mambalrp" and r.relevance.shape == toks.shape
    assert torch.isfinite(r.relevance).all() and r.relevance.abs().sum() > 0
