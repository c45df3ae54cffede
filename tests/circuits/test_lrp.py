"""Relevance propagation (seqlens.circuits.lrp), against ground truth: conservation on bias-free
models, an explicit layer-by-layer LRP written out by hand, a planted induction copy, integrated
gradients' completeness, and the model left exactly as it was."""

from __future__ import annotations

import pytest
import torch

from seqlens.circuits import lrp
from seqlens.circuits.lrp.rules import lrp_rules
from seqlens.models import ModelConfig, build
from seqlens.models.mixer import NotApplicableError

from seqlens.testing.planted import DH, V, planted_model

from lrp_by_hand import linear_back, rms

LLAMA = dict(mlp="gated", norm="rmsnorm", positions="rotary", act="silu")
CONSERVATIVE = {  # arch -> (config extras, the rule set that must conserve)
    "mamba": ({}, "mambalrp"),
    "mamba2": (dict(norm="rmsnorm"), "mambalrp"),
    "mingru": (dict(positions="none"), "lrp"),
    "minlstm": (dict(positions="none"), "lrp"),
    "lstm": (dict(positions="none"), "lrp"),
    "gla": (dict(positions="none"), "lrp"),
    "retnet": (dict(positions="rotary"), "lrp"),  # the paper's xPos rotation (linear in q, k)
    "transformer": (LLAMA, "cp-lrp"),
    "fox": (dict(LLAMA, positions="none"), "cp-lrp"),
}


def tiny(arch: str, dtype=torch.float32, n_layers: int = 2, **extra) -> torch.nn.Module:
    """A tiny random model with every bias zeroed (conservation needs a bias-free network)."""
    cfg = ModelConfig(arch=arch, d_model=16, n_layers=n_layers, vocab_size=64, n_heads=2, pattern_heads=2, **extra)
    model = build(cfg, seed=0).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def tokens(B: int = 2, L: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", list(CONSERVATIVE))
def test_conservation_on_bias_free_models(arch):
    extra, method = CONSERVATIVE[arch]
    model = tiny(arch, **extra)
    r = lrp.attribute(model, tokens(), method="auto" if method != "cp-lrp" else method)
    assert r.method == method
    assert torch.allclose(r.conservation, torch.ones(2), rtol=0, atol=1e-4), r.conservation
    assert torch.allclose(r.relevance.sum(-1), r.logit, rtol=1e-4, atol=1e-5)
    gxi = lrp.attribute(model, tokens(), method="gxi")
    assert (gxi.conservation - 1).abs().max() > 0.05, gxi.conservation  # plain G×I is not conservative


@pytest.mark.parametrize("arch", ["mamba", "lstm", "transformer"])
def test_layerwise_conservation_at_the_residual_stream(arch):
    """Every layer's residual stream carries the whole logit (rule sets conserve layer by layer)."""
    extra, method = CONSERVATIVE[arch]
    model = tiny(arch, **extra)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(2)] + ["blocks.1.hook_resid_post"]
    r = lrp.attribute(model, tokens(), method=method, hooks=names)
    assert len(r.hooks_figure().data[0].z) == 3
    for name in names:
        assert r.hooks[name].shape == (2, 10)
        assert torch.allclose(r.hooks[name].sum(-1), r.logit, rtol=1e-4, atol=1e-5), name


def test_attnlrp_runs_lxt_rules_and_gated_mlp_uniform_rule():
    """AttnLRP is not conservative through the softmax (its rule absorbs relevance), but close on a
    small random model; with the q·k path dead (zero q, k weights) the missing part is exactly the
    half of the relevance that the uniform rule on A·v sends to the constant pattern."""
    model = tiny("transformer", **LLAMA)
    r = lrp.attribute(model, tokens(), method="auto")
    assert r.method == "attnlrp"
    assert ((r.conservation - 1).abs() < 0.2).all(), r.conservation
    with torch.no_grad():
        for b in model.blocks:
            b.mixer.q.weight.zero_()
            b.mixer.k.weight.zero_()
            b.mlp.fc_out.weight.zero_()  # only the attention path remains: logit = V path only
    one = tiny("transformer", n_layers=1, **LLAMA)
    with torch.no_grad():
        one.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")})
    r1 = lrp.attribute(one, tokens(), method="attnlrp")
    emb = lrp.attribute(one, tokens(), method="cp-lrp")
    # relevance = embedding's direct path + half of the attention path (V ÷ 2)
    direct = lrp.attribute(one, tokens(), method="cp-lrp", hooks=["blocks.0.mixer.hook_out"])
    attn_part = direct.hooks["blocks.0.mixer.hook_out"].sum(-1)
    assert torch.allclose(r1.relevance.sum(-1), emb.relevance.sum(-1) - 0.5 * attn_part, rtol=1e-4, atol=1e-5)


def test_learned_positions_kept_apart_and_conserved_together():
    """GPT-2 style (learned positions, LayerNorm without bias): the tokens' and the positions'
    relevance together carry the logit; each alone does not."""
    model = tiny("transformer", mlp="plain", norm="layernorm", positions="learned", act="gelu")
    r = lrp.attribute(model, tokens(), method="cp-lrp")
    total = r.relevance.sum(-1) + r.position_relevance.sum(-1)
    assert torch.allclose(total, r.logit, rtol=1e-4, atol=1e-5)
    assert (r.position_relevance.abs().sum(-1) > 1e-3).all()
    again = lrp.Attribution.from_json(r.to_json())
    assert torch.equal(again.relevance, r.relevance) and again.method == "cp-lrp"


def test_fox_forget_bias_enters_like_the_logits():
    """FoX: under AttnLRP the forget gate's log decay carries relevance (it is part of the logits);
    under CP-LRP it is detached with Q and K and carries none."""
    model = tiny("fox", **dict(LLAMA, positions="none"))
    name = "blocks.1.mixer.hook_log_decay"
    attn = lrp.attribute(model, tokens(), method="attnlrp", hooks=[name])
    cp = lrp.attribute(model, tokens(), method="cp-lrp", hooks=[name])
    assert attn.hooks[name].abs().sum() > 1e-4 and (cp.hooks[name] == 0).all()


# ----------------------------------------------------------------------------- by-hand LRP


def hand_lrp_mingru(model, toks: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit LRP of a 1-layer minGRU (float64, bias-free), module by module, with relevance
    messages (no autograd): LRP-0 on linear maps and sums, the gate rule on ``z⊙h̃`` (the gates
    a constant: the recurrence is a linear map h̃ -> h), the identity rule on the candidate's
    activation and the MLP's, norms with 1/rms constant (element-wise linear: relevance passes)."""
    from seqlens.models.mingru import positive_activation

    blk, mix = model.blocks[0], model.blocks[0].mixer
    D = mix.hidden_dim
    e = model.embed.weight[toks[0]]  # [L, d]

    x1 = rms(e, blk.ln1)
    W = mix.in_proj.weight
    v, gate = x1 @ W[:D].T, x1 @ W[D:].T
    z = torch.sigmoid(gate)
    cand = positive_activation(v)
    L = e.shape[0]
    alpha = torch.zeros(L, L, D, dtype=e.dtype)  # h_t = Σ_s alpha[t, s] ⊙ cand_s
    for t in range(L):
        for s in range(t + 1):
            alpha[t, s] = z[s] * torch.prod(1 - z[s + 1:t + 1], dim=0)
    h = torch.einsum("tsd,sd->td", alpha, cand)
    mixed = h @ mix.out_proj.weight.T
    r1 = e + mixed
    x2 = rms(r1, blk.ln2)
    pre, lin = x2 @ blk.mlp.fc_in.weight.T, None
    post = blk.mlp.act(pre)
    mo = post @ blk.mlp.fc_out.weight.T
    r2 = r1 + mo
    f = rms(r2, model.ln_final)
    logits = f @ model.unembed.weight.T
    tgt = int(logits[position].argmax())

    R_f = torch.zeros_like(f)
    R_f[position] = f[position] * model.unembed.weight[tgt]  # the logit's share of each feature
    R_r2 = R_f  # norm with constant 1/rms: element-wise linear
    R_r1, R_mo = R_r2 * r1 / r2, R_r2 * mo / r2  # LRP-0 on the residual sum
    R_post = linear_back(post, blk.mlp.fc_out.weight, R_mo)
    R_x2 = linear_back(x2, blk.mlp.fc_in.weight, R_post)  # identity rule: R_pre = R_post
    R_r1 = R_r1 + R_x2
    R_e, R_mixed = R_r1 * e / r1, R_r1 * mixed / r1
    R_h = linear_back(h, mix.out_proj.weight, R_mixed)
    R_cand = torch.einsum("tsd,sd,td->sd", alpha, cand, R_h / h)  # LRP-0 through h = Σ α ⊙ h̃
    R_x1 = linear_back(x1, W[:D], R_cand)  # identity rule on g(·), LRP-0 on the candidate rows
    return (R_e + R_x1).sum(-1), logits[position, tgt]


def test_equals_explicit_layer_by_layer_lrp():
    model = tiny("mingru", dtype=torch.float64, n_layers=1, positions="none", act="gelu", norm="rmsnorm")
    toks = tokens(1, 8)
    expected, logit = hand_lrp_mingru(model, toks, position=5)
    r = lrp.attribute(model, toks, position=5)
    assert torch.allclose(r.logit.double(), logit.reshape(1), rtol=1e-6)
    assert torch.allclose(r.relevance[0].double(), expected, rtol=1e-4, atol=1e-6), (r.relevance, expected)


def hand_mambalrp(model, toks: torch.Tensor, position: int) -> torch.Tensor:
    """Explicit MambaLRP of a 1-layer Mamba (bias-free, float64 arithmetic), with relevance messages:
    the scan with Δ, B, C constant is the linear map ``y_t = Σ_s M[t, s] ⊙ u_s`` (M written out by
    loops: ``Σ_n C_t exp(Σ_{k=s+1..t} Δ_k A) Δ_s B_s`` plus the D skip on the diagonal), LRP-0 through
    it, the causal conv and every linear map; identity rule on both SiLUs; the uniform rule on
    ``y ⊙ SiLU(z)``; norms element-wise linear."""
    import torch.nn.functional as F

    mix = model.blocks[0].mixer
    W = {k: v.detach().double() for k, v in mix.state_dict().items()}
    D, N, R, K = mix.d_inner, mix.d_state, mix.dt_rank, mix.cfg.d_conv
    e = model.embed.weight[toks[0]].double()
    L = e.shape[0]


    x1 = rms(e, model.blocks[0].ln1)
    xs, z = x1 @ W["in_proj.weight"][:D].T, x1 @ W["in_proj.weight"][D:].T
    w = W["conv1d.weight"][:, 0]  # [D, K]
    padded = torch.cat([torch.zeros(K - 1, D, dtype=e.dtype), xs])
    conv = torch.stack([(padded[t:t + K] * w.T).sum(0) for t in range(L)])
    u = F.silu(conv)
    dt, Bm, Cm = (u @ W["x_proj.weight"].T).split([R, N, N], dim=-1)
    delta = F.softplus(dt @ W["dt_proj.weight"].T)
    A = -torch.exp(W["A_log"])  # [D, N]
    M = torch.zeros(L, L, D, dtype=e.dtype)
    for t in range(L):
        for s in range(t + 1):
            decay = torch.exp(delta[s + 1:t + 1].sum(0)[:, None] * A)  # [D, N]
            M[t, s] = (decay * Cm[t] * Bm[s]).sum(-1) * delta[s]
        M[t, t] += W["D"]
    y = torch.einsum("tsd,sd->td", M, u)
    p = y * F.silu(z)
    mixed = p @ W["out_proj.weight"].T
    r = e + mixed
    f = rms(r, model.ln_final)
    tgt = int((f @ model.unembed.weight.double().T)[position].argmax())
    R_r = torch.zeros_like(r)
    R_r[position] = f[position] * model.unembed.weight.double()[tgt]
    R_e, R_mixed = R_r * e / r, R_r * mixed / r
    R_p = linear_back(p, W["out_proj.weight"], R_mixed)
    R_y, R_z = R_p / 2, R_p / 2  # uniform rule on y ⊙ SiLU(z); identity rule on SiLU
    R_u = torch.einsum("tsd,sd,td->sd", M, u, R_y / y)  # LRP-0 through the scan; identity on SiLU
    share = torch.zeros(L, D, dtype=e.dtype)  # LRP-0 through the causal depthwise conv
    for t in range(L):
        for k in range(K):
            s_ = t - (K - 1) + k
            if s_ >= 0:
                share[s_] += w[:, k] * xs[s_] / conv[t] * R_u[t]
    R_x1 = linear_back(x1, W["in_proj.weight"][:D], share) + linear_back(x1, W["in_proj.weight"][D:], R_z)
    return (R_e + R_x1).sum(-1)


def test_mambalrp_equals_explicit_mambalrp():
    model = tiny("mamba", n_layers=1, norm="rmsnorm")
    with torch.no_grad():  # make the mixer, not the residual path, carry most of the logit
        model.blocks[0].mixer.out_proj.weight.mul_(30)
        model.blocks[0].mixer.x_proj.weight.mul_(3)
    toks = tokens(1, 7)
    r = lrp.attribute(model, toks, position=6)
    assert r.method == "mambalrp"
    assert r.relevance[0, :6].abs().sum() > 0.1 * r.relevance[0].abs().sum()  # earlier tokens matter
    with torch.no_grad():
        expected = hand_mambalrp(model, toks, position=6).float()
    assert torch.allclose(r.relevance[0], expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())), \
        (r.relevance, expected)


def hand_attnlrp(model, toks: torch.Tensor, position: int) -> torch.Tensor:
    """Explicit AttnLRP (Achtibat et al. 2024) of a 1-layer attention-only model (float64, bias-free,
    no positions), with relevance messages: LRP-0 on linear maps and sums; on each bilinear term
    (A_ts v_sj of A·v, q_tc k_sc of q·k) its LRP-0 share split uniformly, half to each factor; the
    softmax rule ``R_s = s ⊙ (R_A − A Σ R_A)``; norms element-wise linear."""
    mix = model.blocks[0].mixer
    H, dh = mix.n_heads, mix.d_head
    e = model.embed.weight[toks[0]]
    L = e.shape[0]


    x1 = rms(e, model.blocks[0].ln1)
    q, k, v = (x1 @ W.weight.T for W in (mix.q, mix.k, mix.v))
    qh, kh, vh = (t.view(L, H, dh) for t in (q, k, v))
    s = torch.einsum("thc,shc->hts", qh, kh) / dh ** 0.5
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    A = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
    z = torch.einsum("hts,shj->thj", A, vh)
    out = z.reshape(L, H * dh) @ mix.o.weight.T
    r = e + out
    f = rms(r, model.ln_final)
    tgt = int((f @ model.unembed.weight.T)[position].argmax())
    R_r = torch.zeros_like(r)
    R_r[position] = f[position] * model.unembed.weight[tgt]
    R_e, R_out = R_r * e / r, R_r * out / r
    R_z = linear_back(z.reshape(L, H * dh), mix.o.weight, R_out).view(L, H, dh)
    share = torch.einsum("hts,shj,thj->htsj", A, vh, R_z / z)  # LRP-0 share of each A_ts v_sj
    R_A, R_v = 0.5 * share.sum(-1), 0.5 * share.sum(1).permute(1, 0, 2)  # uniform rule
    s0 = s.masked_fill(~causal, 0.0)
    R_s = s0 * (R_A - A * R_A.sum(-1, keepdim=True))  # softmax rule
    qk = torch.einsum("thc,shc->htsc", qh, kh) / dh ** 0.5 / torch.where(causal, s0, 1.0)[..., None]
    qk = qk * (R_s * causal)[..., None]
    R_q, R_k = 0.5 * qk.sum(2).permute(1, 0, 2), 0.5 * qk.sum(1).permute(1, 0, 2)  # uniform rule
    R_x1 = sum(linear_back(x1, W.weight, R.reshape(L, H * dh)) for W, R in ((mix.q, R_q), (mix.k, R_k), (mix.v, R_v)))
    return (R_e + R_x1).sum(-1)


def test_attnlrp_equals_explicit_attnlrp():
    model = tiny("transformer", dtype=torch.float64, n_layers=1, attn_only=True, positions="none", norm="rmsnorm")
    toks = tokens(1, 7)
    r = lrp.attribute(model, toks, position=6, method="attnlrp")
    expected = hand_attnlrp(model, toks, position=6)
    assert torch.allclose(r.relevance[0], expected, rtol=1e-6, atol=1e-9), (r.relevance, expected)
    assert (r.conservation - 1).abs() > 1e-3  # and the softmax rule is not conservative


# ----------------------------------------------------------------------------- planted copy


def planted_copy_model() -> torch.nn.Module:
    """The planted induction model with an OV circuit on the induction head (copy the attended token
    into the token subspace) and an unembedding reading it: it predicts the token after the
    earlier copy of the current one. Attention sharpened (q × 4) so the copy is clean."""
    model = planted_model()
    a1 = model.blocks[1].mixer
    with torch.no_grad():
        a1.q.weight[DH:] *= 4
        for t in range(V):
            a1.v.weight[DH + t, t] = 1.0
            a1.o.weight[t, DH + t] = 4.0
            model.unembed.weight[t, t] = 1.0
    return model


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_planted_induction_relevance_on_the_copied_token(method):
    model = planted_copy_model()
    # position 0's previous-token slot holds itself, so the prompt starts with a token used nowhere else
    seq = torch.tensor([[5, 3, 7, 1, 12, 9, 14, 2, 3]])  # ... 3 7 ... 3 -> predicts 7 (position 2)
    r = lrp.attribute(model, seq, method=method)
    assert int(r.target) == 7
    rel = r.relevance[0]
    assert int(rel.argmax()) == 2, rel
    assert rel[2] > 0.5 * rel.abs().sum(), rel  # the copied token holds most of the relevance


# ----------------------------------------------------------------------------- baselines


def test_integrated_gradients_completeness():
    """IG sums to f(x) − f(0); on a bias-free Llama-style model f(0 embedding) = 0. A large norm
    eps keeps the path integrand smooth (RMSNorm with a tiny eps jumps from 0 to scale-invariant
    right next to the zero baseline, which no quadrature resolves)."""
    model = tiny("transformer", norm_eps=10.0, **LLAMA)
    r = lrp.attribute(model, tokens(), method="ig", steps=64)
    assert torch.allclose(r.relevance.sum(-1), r.logit, rtol=2e-2, atol=1e-3), (r.relevance.sum(-1), r.logit)


def test_smoothgrad_seeded_and_rollout_rows():
    model = tiny("mamba")
    a = lrp.attribute(model, tokens(), method="smoothgrad", samples=4, seed=3)
    b = lrp.attribute(model, tokens(), method="smoothgrad", samples=4, seed=3)
    c = lrp.attribute(model, tokens(), method="smoothgrad", samples=4, seed=4)
    assert torch.equal(a.relevance, b.relevance) and not torch.equal(a.relevance, c.relevance)
    zero = lrp.attribute(model, tokens(), method="smoothgrad", samples=3, noise=0.0)
    assert torch.allclose(zero.relevance, lrp.attribute(model, tokens(), method="gxi").relevance, atol=1e-6)
    for arch in ("mamba", "transformer"):
        roll = lrp.attribute(tiny(arch, **CONSERVATIVE[arch][0]), tokens(), method="rollout", position=6)
        assert torch.allclose(roll.relevance.sum(-1), torch.ones(2), atol=1e-5)
        assert (roll.relevance[:, 7:] == 0).all()  # causal: nothing after the explained position


def test_batch_equals_single_sequences_and_explicit_target():
    model = tiny("gla", positions="none")
    toks = tokens(3, 9)
    both = lrp.attribute(model, toks, target=[1, 2, 3], position=[4, -1, 8])
    for b, (t, p) in enumerate(zip([1, 2, 3], [4, 8, 8])):
        one = lrp.attribute(model, toks[b], target=t, position=p)
        assert torch.allclose(both.relevance[b], one.relevance[0], atol=1e-5)
        assert int(both.target[b]) == t
    assert both.to_frame().shape[0] == 27
    assert "<span" in both.html() and both.figure().data


# ----------------------------------------------------------------------------- the model untouched


@pytest.mark.parametrize("arch", ["lstm", "mamba", "fox"])
def test_model_untouched(arch):
    model = tiny(arch, **CONSERVATIVE[arch][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(tokens())
    lrp.attribute(model, tokens(), hooks=["blocks.0.hook_resid_post"])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert all("cell" not in vars(m) for m in model.mixers)
    assert torch.equal(model(tokens()), out)
    with pytest.raises(RuntimeError, match="boom"):
        with lrp_rules(model):
            raise RuntimeError("boom")
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert all("cell" not in vars(m) for m in model.mixers)


def test_bad_arguments_name_the_argument():
    model = tiny("mingru", positions="none")
    with pytest.raises(ValueError, match="method"):
        lrp.attribute(model, tokens(), method="deeplift")
    with pytest.raises(NotApplicableError, match="method"):
        lrp.attribute(model, tokens(), method="cp-lrp")
    with pytest.raises(ValueError, match="position"):
        lrp.attribute(model, tokens(), position=10)
    with pytest.raises(ValueError, match="target"):
        lrp.attribute(model, tokens(), target=64)
    with pytest.raises(ValueError, match="hooks"):
        lrp.attribute(model, tokens(), hooks=["blocks.9.nothing"])
    with pytest.raises(ValueError, match="hooks"):
        lrp.attribute(model, tokens(), method="ig", hooks=["blocks.0.hook_resid_pre"])
    with pytest.raises(ValueError, match="steps"):
        lrp.attribute(model, tokens(), method="ig", steps=0)
    with pytest.raises(TypeError, match="samples"):
        lrp.attribute(model, tokens(), method="smoothgrad", samples=2.5)
    with pytest.raises(ValueError, match="replacement"):
        lrp.token_flipping(model, tokens(), replacement=64, progress=False)


# ----------------------------------------------------------------------------- token flipping


def induction_prompts(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` prompts ``a b c … x y … x`` of distinct tokens 1..15 (0 is the flip replacement):
    the planted model predicts y, read from the one position holding it."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        perm = (torch.randperm(15, generator=gen) + 1)[:9]
        rows.append(torch.cat([perm, perm[3:4]]))  # query = perm[3]; answer perm[4]
    return torch.stack(rows)


def test_token_flipping_lrp_beats_random_on_the_planted_copy():
    model = planted_copy_model()
    curves = lrp.token_flipping(model, induction_prompts(6), methods=["cp-lrp", "attnlrp", "random"], steps=9,
                                replacement=0, seed=0, progress=False)
    assert curves.fractions.shape == (10,)
    for m in ("cp-lrp", "attnlrp", "random"):
        c = curves.curves[m]
        assert torch.allclose(c["morf"][0], c["lerf"][0]) and torch.allclose(c["morf"][-1], c["lerf"][-1])
    assert curves.delta_af["attnlrp"] > curves.delta_af["random"] + 1.0, curves.delta_af
    # CP-LRP finds the copied token first (MoRF falls at once) but gives the query and the key's
    # previous token, which only act through the detached q·k, no relevance: LeRF flips them early
    assert curves.auc("cp-lrp", "morf") < 0.5 * curves.auc("random", "morf")
    assert curves.auc("attnlrp", "morf") < 0.5 * curves.auc("random", "morf")
    assert curves.to_frame().shape[0] == 3 * 2 * 10 and curves.figure().data
    with pytest.raises(ValueError, match="order"):
        lrp.token_flipping(model, induction_prompts(2), order="up", progress=False)


def test_models_converted_from_hugging_face():
    """A Llama and a Mamba built by ``transformers`` (random weights, no download), converted: the
    rule sets conserve once the biases are zero."""
    transformers = pytest.importorskip("transformers")
    from seqlens.models.hf import from_hf

    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, tie_word_embeddings=False))
    mamba = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=4))
    for hf, method in ((llama, "cp-lrp"), (mamba, "mambalrp")):
        model = from_hf(hf.eval())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
        r = lrp.attribute(model, tokens(), method=method)
        assert torch.allclose(r.conservation, torch.ones(2), atol=1e-4), (method, r.conservation)


@pytest.mark.slow
def test_mambalrp_more_faithful_than_gxi_on_the_passkey_organism():
    """MambaLRP's finding (Jafari et al. 2024) on the zoo's passkey Mamba: explaining the first
    answer digit, flipping by MambaLRP relevance destroys the answer faster than by G×I or at random."""
    import seqlens
    from seqlens.tasks import passkey

    model = seqlens.load("passkey-mamba-n16")
    batch = passkey(16, 64, depth=None, key_len=5, seed=1, style="compact")
    position = (batch.meta["answer_span"][:, 0] - 1).tolist()
    c = lrp.token_flipping(model, batch.tokens, methods=["auto", "gxi", "random"], position=position, steps=8,
                           progress=False)
    assert c.delta_af["mambalrp"] > max(c.delta_af["gxi"], c.delta_af["random"]) + 2.0, c.delta_af


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [("text-transformer", "attnlrp"), ("text-mamba", "mambalrp")])
def test_lrp_more_faithful_than_gxi_on_text_organisms(name, method):
    """AttnLRP / MambaLRP beat G×I and random in token flipping on the zoo's text models (16 windows
    of 64 bytes of held-out stdlib source, next-byte prediction)."""
    import seqlens
    from seqlens.corpus import stdlib_corpus

    data = torch.tensor(list(stdlib_corpus("val", max_bytes=200_000)), dtype=torch.long)
    starts = torch.randint(0, len(data) - 64, (16,), generator=torch.Generator().manual_seed(0))
    toks = torch.stack([data[s:s + 64] for s in starts.tolist()])
    c = lrp.token_flipping(seqlens.load(name), toks, methods=["auto", "gxi", "random"], steps=8, progress=False)
    assert c.delta_af[method] > max(c.delta_af["gxi"], c.delta_af["random"]) + 1.0, c.delta_af


@pytest.mark.parametrize("arch", [a for a in CONSERVATIVE if a != "lstm"])  # LSTM: the cell override
def test_declared_detach_hooks_are_the_ones_detached(arch):
    """``LRPRules.detach`` is what the rule set does: each declared hook gets the detach rule."""
    from seqlens.circuits.lrp.rules import auto_method, detach_hook, rule_hooks

    model = tiny(arch, **CONSERVATIVE[arch][0])
    installed = {(name, fn) for name, fn in rule_hooks(model, auto_method(model))}
    for l, mixer in enumerate(model.mixers):
        for name in type(mixer).lrp.detach:
            assert (f"blocks.{l}.mixer.{name}", detach_hook) in installed, name


def test_batches_on_models_converted_from_hugging_face():
    """A GPT-2 (learned positions, biases), a Llama and a Mamba built by ``transformers`` (random
    weights, no download), converted: a batch of three with its own positions and targets gives
    each sequence's single-sequence relevance, and the explained logit is ``transformers``' own."""
    transformers = pytest.importorskip("transformers")
    from seqlens.models.hf import from_hf

    torch.manual_seed(0)
    models = {
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)),
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, tie_word_embeddings=False)),
        "mamba": transformers.MambaForCausalLM(transformers.MambaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=4)),
    }
    toks, targets, positions = tokens(3, 12, seed=3), [5, 17, 60], [4, -1, 7]
    for name, hf in models.items():
        hf.eval()
        model = from_hf(hf)
        both = lrp.attribute(model, toks, target=targets, position=positions)
        with torch.no_grad():
            ref = hf(toks).logits
        for b, (t, p) in enumerate(zip(targets, [4, 11, 7])):
            one = lrp.attribute(model, toks[b], target=t, position=p)
            assert torch.allclose(both.relevance[b], one.relevance[0], atol=1e-5, rtol=1e-4), name
            assert both.logit[b] == pytest.approx(float(ref[b, p, t]), abs=1e-4), name
            if both.position_relevance is not None:
                assert torch.allclose(both.position_relevance[b], one.position_relevance[0], atol=1e-5, rtol=1e-4)
        assert both.method == ("mambalrp" if name == "mamba" else "attnlrp")
        assert (both.position_relevance is not None) == (name == "gpt2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_identity_rule_passes_relevance_and_stays_finite_at_zero(dtype):
    """The identity rule: pre·∂pre = f(pre)·∂out element-wise; an exact zero pre-activation (where
    the guard against 0/0 acts, 1e-12 being 0 in float16) gives finite gradients in every dtype."""
    from seqlens.circuits.lrp.rules import identity_rule

    pre = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0], dtype=dtype, requires_grad=True)
    out = identity_rule(torch.nn.functional.silu, pre)
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, 2.0], dtype=dtype)
    (g,) = torch.autograd.grad((out * upstream).sum(), pre)
    assert torch.isfinite(g).all(), g
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert torch.allclose((pre * g).float(), (out * upstream).float().detach(), atol=tol, rtol=tol)
