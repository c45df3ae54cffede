"""Training: recovery of a planted sparse dictionary, determinism, resuming, and each
architecture's training-time semantics (BatchTopK, JumpReLU's straight-through estimator, the
unit-norm decoder, input normalisation folded into the weights)."""

import math

import pytest
import torch

from sae_helpers import best_match, sparse_data
from seqlens.probes import sae as S
from seqlens.probes.sae.train import JumpReLUFn, StepFn, TrainingLog, batch_topk_codes

X, D = sparse_data(n=2048, d=16, m=24, k=2)
FAST = dict(d_sae=48, steps=300, batch_size=128, lr=1e-2, progress=False)


@pytest.mark.parametrize("arch", ["topk", "matching_pursuit"])
def test_topk_and_mp_recover_the_planted_atoms(arch):
    s = S.train_sae(X, architecture=arch, k=2, **FAST)
    match = best_match(s.W_dec.detach(), D)
    assert (match > 0.9).float().mean() >= 0.9, match
    with torch.no_grad():
        fvu = float((X - s(X)).var(0, unbiased=False).sum() / X.var(0, unbiased=False).sum())
        assert fvu < 0.1
    assert torch.allclose(s.W_dec.norm(dim=-1), torch.ones(48), atol=1e-5)  # unit-norm decoder kept


def test_training_is_deterministic_for_a_seed():
    a = S.train_sae(X, architecture="topk", k=2, seed=3, **{**FAST, "steps": 30})
    b = S.train_sae(X, architecture="topk", k=2, seed=3, **{**FAST, "steps": 30})
    c = S.train_sae(X, architecture="topk", k=2, seed=4, **{**FAST, "steps": 30})
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.W_enc, b.W_enc)
    assert not torch.equal(a.W_dec, c.W_dec)
    assert a.training_log.loss == b.training_log.loss


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path, arch):
    kw = dict(architecture=arch, k=2, **{**FAST, "steps": 40}, checkpoint_every=10)
    if arch == "jumprelu":
        kw.pop("k")
    full = S.train_sae(X, checkpoint_dir=tmp_path / "a", **kw)
    S.train_sae(X, checkpoint_dir=tmp_path / "b", **{**kw, "steps": 20})  # stopped half way
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["train_state.safetensors"]  # one atomic file
    resumed = S.train_sae(X, checkpoint_dir=tmp_path / "b", **kw)
    for name in resumed.PARAMS:
        assert torch.equal(getattr(full, name), getattr(resumed, name)), name
    assert resumed.training_log.loss == full.training_log.loss
    with pytest.raises(ValueError, match="other settings"):
        S.train_sae(X, checkpoint_dir=tmp_path / "b", **{**kw, "lr": 0.5})


def test_batchtopk_selects_k_times_batch_codes_and_infers_with_its_threshold():
    z = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    f = batch_topk_codes(z, 3)
    assert int((f > 0).sum()) == 24 and (f > 0).sum(-1).tolist() != [3] * 8  # k on average, not per row
    assert float(f[f > 0].min()) >= float(z.flatten().topk(24).values.min())
    s = S.train_sae(X, architecture="batchtopk", k=2, **{**FAST, "steps": 150})
    assert isinstance(s, S.JumpReLUSAE) and s.cfg.metadata["training_architecture"] == "batchtopk"
    theta = s.threshold.detach()
    assert torch.all(theta == theta[0]) and theta[0] > 0  # one global threshold
    l0 = (s.encode(X) > 0).sum(-1).float().mean()
    assert 1.0 <= l0 <= 4.0  # the threshold keeps about k codes per sample at inference


def test_jumprelu_straight_through_gradients_are_the_rectangle_kernel():
    z = torch.tensor([[0.10, 0.50, 0.2995], [0.3004, -1.0, 0.30]], requires_grad=True)
    theta = torch.tensor([0.1002, 0.2, 0.30], requires_grad=True)
    eps = 0.001
    out = JumpReLUFn.apply(z, theta, eps)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.0, 0.5, 0.0], [0.3004, 0.0, 0.0]]))
    out.sum().backward()
    # dθ_i = -(θ_i/ε) Σ_b K((z_bi − θ_i)/ε), K the indicator of |u| < 1/2
    K = (((z.detach() - theta.detach()) / eps).abs() < 0.5).float()
    torch.testing.assert_close(theta.grad, -(theta.detach() / eps) * K.sum(0))
    torch.testing.assert_close(z.grad, (z.detach() > theta.detach()).float())
    theta.grad = None
    StepFn.apply(z, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, -(1 / eps) * K.sum(0))


def test_jumprelu_trains_sparse_codes_with_nonnegative_thresholds():
    s = S.train_sae(X, architecture="jumprelu", l0_coefficient=0.01, jumprelu_bandwidth=0.05,
                    jumprelu_init_threshold=0.05, **{**FAST, "steps": 150})
    assert (s.threshold >= 0).all()
    assert float((s.encode(X) > 0).sum(-1).float().mean()) < 12
    assert s.training_log.l0[-1] < s.training_log.l0[0]


def test_standard_variants_and_input_normalisation_folded_into_the_weights():
    classic = S.train_sae(X, architecture="standard", variant="classic", l1_coefficient=0.05, **{**FAST, "steps": 50})
    assert torch.allclose(classic.W_dec.norm(dim=-1), torch.ones(48), atol=1e-5)
    kw = dict(architecture="standard", l1_coefficient=0.05, **{**FAST, "steps": 20})
    a = S.train_sae(X, **kw)                  # April 2024: inputs scaled so E||x|| = sqrt(d_in)
    b = S.train_sae(X * 10, **kw)
    assert a.cfg.normalize_activations == "none"  # folded, as SAELens loads it
    factor = math.sqrt(16) / float(X.norm(dim=-1).mean())
    assert a.cfg.metadata["activation_scaling_factor"] == pytest.approx(factor, rel=1e-5)
    m10 = S.train_sae(X * 10, architecture="matching_pursuit", k=2, normalize_activations="expected_average_only_in",
                      **{**FAST, "steps": 20})
    m1 = S.train_sae(X, architecture="matching_pursuit", k=2, normalize_activations="expected_average_only_in",
                     **{**FAST, "steps": 20})
    with torch.no_grad():  # the folded SAE of 10·X is the SAE of X, scaled
        torch.testing.assert_close(b.encode(X * 10), a.encode(X), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(b(X * 10), a(X) * 10, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(m10(X * 10), m1(X) * 10, atol=1e-3, rtol=1e-3)


def test_training_log_is_a_result():
    s = S.train_sae(X, architecture="topk", k=2, **{**FAST, "steps": 10})
    log = s.training_log
    assert log.step == list(range(10)) and len(log.fvu) == 10
    assert list(log.to_frame().columns) == ["step", "loss", "l0", "fvu", "dead_fraction"]
    assert len(log.figure().data) == 4
    assert TrainingLog.from_json(log.to_json()).loss == log.loss
    assert all(l0 <= 2 for l0 in log.l0)
    sparse = S.train_sae(X, architecture="topk", k=2, log_every=4, **{**FAST, "steps": 10}).training_log
    assert sparse.step == [0, 4, 8, 9] and sparse.loss == [log.loss[i] for i in (0, 4, 8, 9)]


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="architecture"):
        S.train_sae(X, architecture="gated", **FAST)
    with pytest.raises(ValueError, match="k: expected"):
        S.train_sae(X, architecture="topk", **FAST)
    with pytest.raises(TypeError, match="X_or_store"):
        S.train_sae([[1.0]], architecture="topk", k=1, **FAST)
    with pytest.raises(TypeError, match="unknown options"):
        S.train_sae(X, architecture="topk", k=2, l2=3, **FAST)
    with pytest.raises(ValueError, match="steps"):
        S.train_sae(X, architecture="topk", k=2, **{**FAST, "steps": 0})
