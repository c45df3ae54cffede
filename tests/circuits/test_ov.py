"""OV circuits, effective embedding and copying scores (docs/methods.md §1, §3): planted ground truth,
agreement with an independent V×V eigendecomposition and TransformerLens' FactoredMatrix, OV
matrices rebuilding the heads' actual outputs, every architecture, zoo organisms, bad input."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import FactoredMatrix

import seqlens
from seqlens.testing import tiny as tiny_models
from seqlens.testing.planted_ov import ANTI, COPYING, RANDOM, SUCCESSOR, planted_ov_model
from seqlens.circuits.heads import HeadScores
from seqlens.circuits.ov import copying_scores, effective_embedding, norm_linear, ov_factors, ov_matrices


@pytest.fixture(scope="module")
def planted():
    return planted_ov_model()


# ----------------------------------------------------------------------------- planted circuit


@pytest.mark.parametrize("full", [True, False])
def test_planted_copying_head_ranks_first(planted, full):
    s = copying_scores(planted, full=full).scores[0]
    assert s.shape == (4,)
    assert s[COPYING] == pytest.approx(1.0, abs=1e-5)
    assert s[ANTI] == pytest.approx(-1.0, abs=1e-5)
    assert abs(float(s[SUCCESSOR])) < 1e-5  # sum of cyclic permutations: trace 0
    (best, s1), (_, s2) = copying_scores(planted, full=full).top(2)
    assert best == (0, COPYING) and s1 - s2 > 0.5, s
    assert abs(float(s[RANDOM])) < 0.5


# ----------------------------------------------------------------------------- independent checks


def _explicit_heads(model, layer):
    """W_V^h [d, dh], W_O^h [dh, d] of an attention layer, read straight off the weights."""
    a = model.blocks[layer].mixer
    H, kv, dh = a.n_heads, a.n_kv, a.d_head
    out = []
    for h in range(H):
        g = h // (H // kv)
        out.append((a.v.weight[g * dh:(g + 1) * dh].T.double(),
                    a.o.weight[:, h * dh:(h + 1) * dh].T.double()))
    return out


def _explicit_norm(norm):
    w = torch.diag(norm.weight.double())
    if type(norm).__name__ == "LayerNorm":
        d = w.shape[0]
        return (torch.eye(d, dtype=torch.float64) - torch.full((d, d), 1.0 / d, dtype=torch.float64)) @ w
    return w


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("fold_ln", [True, False])
def test_copying_equals_full_vocab_eigenvalues(name, fold_ln):
    model = tiny_models.make(name)
    res = copying_scores(model, full=True, fold_ln=fold_ln)
    W_E, W_U = model.embed.weight.double(), model.unembed.weight.double().T
    with torch.no_grad():
        eye = torch.eye(W_E.shape[1], dtype=torch.float64)
        for layer in range(model.cfg.n_layers):
            N1 = _explicit_norm(model.blocks[layer].ln1) if fold_ln else eye
            Nf = _explicit_norm(model.ln_final) if fold_ln else eye
            for h, (Wv, Wo) in enumerate(_explicit_heads(model, layer)):
                lam = torch.linalg.eigvals(W_E @ N1 @ Wv @ Wo @ Nf @ W_U)  # the whole [V, V] circuit
                ref = float(lam.sum().real / lam.abs().sum())
                assert float(res.scores[layer, h]) == pytest.approx(ref, abs=1e-4)
                if not fold_ln:  # TransformerLens semantics: (W_E @ OV @ W_U).eigenvalues
                    fm = W_E @ FactoredMatrix(Wv, Wo) @ W_U
                    tl = fm.eigenvalues
                    assert float(res.scores[layer, h]) == pytest.approx(
                        float(tl.sum().real / tl.abs().sum()), abs=1e-4)


def test_copying_of_ov_alone_equals_dxd_eigenvalues():
    model = tiny_models.make("llama")
    res = copying_scores(model, full=False, fold_ln=False)
    ov = ov_matrices(model, 1).double()
    lam = torch.linalg.eigvals(ov)
    expected = lam.sum(-1).real / lam.abs().sum(-1)
    torch.testing.assert_close(res.scores[1].double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "fox"])
def test_ov_matrices_rebuild_attention_heads(name):
    model = tiny_models.make(name)
    tokens = tiny_models.tokens(2, 12)
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        a = model.blocks[layer].mixer
        x = cache[f"blocks.{layer}.ln1.hook_out"]
        pattern, z = cache[f"blocks.{layer}.mixer.hook_pattern"], cache[f"blocks.{layer}.mixer.hook_z"]
        W_V, W_O, kind = ov_factors(model, layer)
        ov = ov_matrices(model, layer)
        assert kind == "attention" and ov.shape == (a.n_heads, model.cfg.d_model, model.cfg.d_model)
        total = torch.zeros_like(cache[f"blocks.{layer}.mixer.hook_out"])
        for h in range(a.n_heads):
            actual = z[:, :, h] @ W_O[h]  # what head h writes
            rebuilt = pattern[:, h] @ (x @ ov[h])
            if a.v.bias is not None:  # the value bias passes through the (row-stochastic) pattern
                g = h // (a.n_heads // a.n_kv)
                rebuilt = rebuilt + a.v.bias[g * a.d_head:(g + 1) * a.d_head] @ W_O[h]
            torch.testing.assert_close(rebuilt, actual, atol=1e-5, rtol=1e-4)
            total += actual
        if a.o.bias is not None:
            total += a.o.bias
        torch.testing.assert_close(total, cache[f"blocks.{layer}.mixer.hook_out"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_ov_matrices_rebuild_linear_attention_without_per_token_factors(name):
    # with the output gate and the group norm's 1/rms set to 1, the mixer output is exactly
    # Σ_h α_h @ (x @ W_OV^h): the linearisation leaves out nothing else
    model = tiny_models.make(name)
    mixer = model.blocks[0].mixer
    x = model.mixer_input(tiny_models.tokens(2, 10), 0)
    alpha = mixer.pattern(x)  # [B, H, L, L] implicit attention
    seen = {}

    def keep_z(z, hook):
        seen["z"] = z

    def linear_norm(y, hook):
        return seen["z"] * mixer.g_norm.weight

    hooks = [("blocks.0.mixer.hook_z", keep_z), ("blocks.0.mixer.g_norm.hook_out", linear_norm),
             ("blocks.0.mixer.hook_out_gate", lambda g, hook: torch.ones_like(g))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        out, _ = mixer(x)
    ov = ov_matrices(model, 0)
    rebuilt = torch.einsum("bhts,hbsd->btd", alpha, x[None] @ ov[:, None])
    torch.testing.assert_close(rebuilt, out, atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name", list(tiny_models.CONFIGS))
def test_every_architecture_has_finite_scores(name):
    model = tiny_models.make(name)
    cfg = model.cfg
    H = cfg.n_groups
    assert ov_matrices(model, 1).shape == (H, cfg.d_model, cfg.d_model)
    for full in (True, False):
        res = copying_scores(model, full=full)
        assert res.scores.shape == (cfg.n_layers, H)
        assert torch.isfinite(res.scores).all() and (res.scores.abs() <= 1 + 1e-5).all()
    exact = cfg.arch in ("transformer", "fox")
    assert res.settings["ov"].startswith("exact" if exact else "linearised")


@pytest.mark.parametrize("name", ["mqar-mamba", "mqar-mamba2", "mqar-gla", "mqar-mingru", "mqar-lstm",
                                  "successor-transformer"])
def test_zoo_organisms(name):
    res = copying_scores(seqlens.load(name))
    assert torch.isfinite(res.scores).all() and res.settings["model"] == name


# ----------------------------------------------------------------------------- effective embedding


def test_effective_embedding():
    model = tiny_models.make("gpt2")
    W_E, b = model.embed.weight, model.blocks[0]
    ids = torch.tensor([3, 5, 7])
    with torch.no_grad():
        mlp = b.mlp(b.ln2(W_E[ids]))
        torch.testing.assert_close(effective_embedding(model, ids), W_E[ids] + mlp)
        torch.testing.assert_close(effective_embedding(model, [3, 5, 7], resid=False), mlp)
        torch.testing.assert_close(effective_embedding(model, ids, ln=False), W_E[ids] + b.mlp(W_E[ids]))
        torch.testing.assert_close(effective_embedding(model, ids, mlp0=False), W_E[ids])
    assert effective_embedding(model).shape == (model.cfg.vocab_size, model.cfg.d_model)
    for name in ("attn_only", "mamba"):  # no block-0 MLP: just W_E
        m = tiny_models.make(name)
        torch.testing.assert_close(effective_embedding(m), m.embed.weight.detach())


def test_norm_linear_is_the_norm_without_scale_and_bias():
    model = tiny_models.make("gpt2")
    ln = model.blocks[0].ln1
    x = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        centred = x - x.mean(-1, keepdim=True)
        expected = (ln(x) - ln.bias) * centred.pow(2).mean(-1, keepdim=True).add(ln.eps).sqrt()
    torch.testing.assert_close(x @ norm_linear(ln), expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- errors and Result


def test_bad_input_names_the_argument(planted):
    with pytest.raises(ValueError, match="layer"):
        ov_matrices(planted, 1)
    with pytest.raises(ValueError, match="model"):
        copying_scores(object())
    with pytest.raises(ValueError, match="full"):
        copying_scores(planted, full="yes")
    with pytest.raises(ValueError, match="fold_ln"):
        copying_scores(planted, fold_ln=None)
    with pytest.raises(ValueError, match="tokens"):
        effective_embedding(planted, [0, 256])
    with pytest.raises(ValueError, match="tokens"):
        effective_embedding(planted, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="resid"):
        effective_embedding(planted, resid=1)


def test_result_roundtrip(planted):
    res = copying_scores(planted)
    back = HeadScores.from_json(res.to_json())
    torch.testing.assert_close(back.scores, res.scores)
    assert back.name == "copying" and back.settings["full"] is True
    assert list(res.to_frame().columns) == ["layer", "head", "score"]
