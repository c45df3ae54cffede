"""evaluate / splice against their definitions computed by hand."""

import pytest
import torch
import torch.nn.functional as F

import seqlens
from sae_helpers import random_sae
from seqlens.probes import sae as S

TOKENS = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
HOOK = "blocks.1.hook_resid_mid"


def tiny(arch="transformer"):
    return seqlens.build(seqlens.ModelConfig(arch=arch, d_model=16, n_layers=2, vocab_size=64), seed=0).eval()


def identity_sae(d: int) -> S.SAE:
    """A perfect SAE: codes [ReLU(x), ReLU(-x)], decoder [I; -I] (x̂ = x exactly)."""
    s = S.make_sae(S.SAEConfig(architecture="standard", d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([eye, -eye], 1))
        s.W_dec.copy_(torch.cat([eye, -eye], 0))
    return s


def test_reconstruction_metrics_equal_their_definitions():
    X = torch.randn(300, 12, generator=torch.Generator().manual_seed(2)) * 3 + 1
    s = random_sae("topk", k=4)
    m = S.evaluate(s, X)
    with torch.no_grad():
        f, x_hat = s.encode(X), s(X)
    fvu = ((X - x_hat).var(0, unbiased=False).sum() / X.var(0, unbiased=False).sum()).item()
    assert m.fvu == pytest.approx(fvu, rel=1e-5)
    assert m.l0 == pytest.approx((f > 0).sum(-1).float().mean().item())
    assert m.l1 == pytest.approx(f.abs().sum(-1).mean().item(), rel=1e-5)
    assert m.cosine == pytest.approx(F.cosine_similarity(X, x_hat, dim=-1).mean().item(), rel=1e-5)
    assert m.norm_ratio == pytest.approx((x_hat.norm(dim=-1) / X.norm(dim=-1)).mean().item(), rel=1e-5)
    fires = (f > 0).float().mean(0)
    assert m.dead_fraction == pytest.approx((fires == 0).float().mean().item())
    assert m.dense_fraction == pytest.approx((fires > 0.1).float().mean().item())
    torch.testing.assert_close(m.feature_frequency, fires)
    assert m.n_samples == 300 and m.ce_recovered is None
    assert set(m.to_frame()["metric"]) == {"l0", "l1", "fvu", "cosine", "norm_ratio", "dead_fraction", "dense_fraction"}
    assert len(m.figure().data) == 1
    assert type(m).from_json(m.to_json()).fvu == m.fvu


def test_splice_changes_logits_exactly_as_a_hand_written_hook():
    model = tiny()
    s = random_sae("standard", d_in=16, d_sae=32)
    with S.splice(model, s, HOOK):
        spliced = model(TOKENS)
    def by_hand_hook(x, hook):
        return torch.relu((x - s.b_dec) @ s.W_enc + s.b_enc) @ s.W_dec + s.b_dec

    with model.hooks(fwd_hooks=[(HOOK, by_hand_hook)]):
        by_hand = model(TOKENS)
    torch.testing.assert_close(spliced, by_hand)
    assert not torch.allclose(spliced, model(TOKENS))  # and the hook is gone afterwards
    from seqlens.models.hooks import attached_hooks
    assert attached_hooks(model) == []


def test_a_perfect_sae_recovers_all_the_loss_and_ce_metrics_are_their_definitions():
    model = tiny()
    m = S.evaluate(identity_sae(16), TOKENS, model=model, hook=HOOK)
    assert m.fvu == pytest.approx(0.0, abs=1e-10) and m.ce_recovered == pytest.approx(1.0, abs=1e-6)
    assert m.spliced_loss_delta == pytest.approx(0.0, abs=1e-6)
    s = random_sae("topk", d_in=16, d_sae=32, k=4)
    m = S.evaluate(s, TOKENS, model=model, hook=HOOK)
    ce = lambda logits: F.cross_entropy(logits[:, :-1].reshape(-1, 64), TOKENS[:, 1:].reshape(-1)).item()  # noqa: E731
    with torch.no_grad():
        l_orig = ce(model(TOKENS))
        with model.hooks(fwd_hooks=[(HOOK, lambda x, hook: s(x))]):
            l_sae = ce(model(TOKENS))
        with model.hooks(fwd_hooks=[(HOOK, lambda x, hook: torch.zeros_like(x))]):
            l_zero = ce(model(TOKENS))
    assert m.ce_orig == pytest.approx(l_orig, rel=1e-5) and m.ce_sae == pytest.approx(l_sae, rel=1e-5)
    assert m.ce_zero == pytest.approx(l_zero, rel=1e-5)
    assert m.ce_recovered == pytest.approx((l_zero - l_sae) / (l_zero - l_orig), rel=1e-4)
    assert m.spliced_loss_delta == pytest.approx(l_sae - l_orig, rel=1e-4, abs=1e-6)
    _, cache = model.run_with_cache(TOKENS)
    assert m.fvu == pytest.approx(S.evaluate(s, cache[HOOK].reshape(-1, 16)).fvu, rel=1e-5)


def test_state_hooks_evaluate_reconstruction_only_and_refuse_splicing():
    model = tiny("mamba")
    hook = "blocks.0.mixer.hook_state"
    X = S.harvest(model, hook, TOKENS, positions=[9], progress=False).to_tensor()
    s = random_sae("topk", d_in=X.shape[1], d_sae=64, k=4)
    m = S.evaluate(s, TOKENS, model=model, hook=hook, positions=[9])
    assert m.ce_recovered is None and m.fvu == pytest.approx(S.evaluate(s, X).fvu, rel=1e-6)
    from seqlens.probes.gates import NotApplicableError
    with pytest.raises(NotApplicableError, match="read-out tap"):
        with S.splice(model, s, hook):
            pass
    with pytest.raises(ValueError, match="d_in=12"):
        with S.splice(model, random_sae("standard", d_in=12), "blocks.0.hook_resid_post"):
            model(TOKENS)
