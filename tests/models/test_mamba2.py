"""Mamba-2: the SSD scan backends equal their step-loop twin, converted transformers checkpoints
give transformers' logits, the implicit attention rebuilds the scan output, and the protocol's
decay / gate / OV quantities are what the hooks say. (The generic cross-architecture tests run on
``mamba2`` through ``seqlens.testing.tiny.CONFIGS``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import seqlens
from seqlens.models.hf import from_hf
from seqlens.models.io import CheckpointError
from seqlens.models.kernels.ssd import ssd_chunked, ssd_ref, ssd_scan
from seqlens.testing.hf_mamba2 import random_hf_mamba2
from seqlens.testing.tiny import make, tokens

transformers = pytest.importorskip("transformers")


def scan_inputs(Bt=2, L=23, H=4, P=3, G=2, N=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    dt = torch.rand(Bt, L, H, generator=g, dtype=dtype)
    A = -torch.rand(H, generator=g, dtype=dtype) * 2 - 0.05
    return r(Bt, L, H, P), dt, A, r(Bt, L, G, N), r(Bt, L, G, N), r(Bt, H, P, N)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_scan_equals_step_loop(chunk):
    x, dt, A, B, C, S0 = scan_inputs()
    taps = [0, 6, 7, 22]
    ref = ssd_ref(x, dt, A, B, C, S0, taps)
    got = ssd_chunked(x, dt, A, B, C, S0, taps, chunk_size=chunk)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_step_loop_is_the_recurrence():
    """The reference against the recurrence written per head and channel (float64)."""
    x, dt, A, B, C, _ = scan_inputs(Bt=1, L=5, H=2, P=2, G=1, N=3, dtype=torch.float64)
    y = ssd_ref(x, dt, A, B, C).y
    for h in range(2):
        S = torch.zeros(2, 3, dtype=torch.float64)
        for t in range(5):
            S = torch.exp(dt[0, t, h] * A[h]) * S + dt[0, t, h] * torch.outer(x[0, t, h], B[0, t, 0])
            torch.testing.assert_close(y[0, t, h], S @ C[0, t, 0])


def test_chunked_gradients_equal_reference():
    x, dt, A, B, C, S0 = (t.double().requires_grad_() for t in scan_inputs(L=11, dtype=torch.float64))
    ref = ssd_ref(x, dt, A, B, C, S0)
    got = ssd_chunked(x, dt, A, B, C, S0, chunk_size=4)
    w = torch.randn_like(ref.y)
    g_ref = torch.autograd.grad((ref.y * w).sum() + ref.final_state.sum(), (x, dt, A, B, C, S0))
    g_got = torch.autograd.grad((got.y * w).sum() + got.final_state.sum(), (x, dt, A, B, C, S0))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b)


def test_triton_scan_equals_reference_in_interpreter():
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and not seqlens.models.kernels.dispatch.interpreting():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, dt, A, B, C, S0 = (t.to(dev) for t in scan_inputs(L=9, P=5, N=6))
    taps = [2, 8]
    ref = ssd_ref(x, dt, A, B, C, S0, taps)
    got = ssd_scan(x, dt, A, B, C, S0, taps, backend="triton")
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # without an initial state or taps; and gradients (backward recomputes through the chunked form)
    xs = x.clone().requires_grad_()
    got = ssd_scan(xs, dt, A, B, C, backend="triton")
    torch.testing.assert_close(got.y, ssd_ref(x, dt, A, B, C).y, atol=1e-5, rtol=1e-5)
    assert got.taps is None
    (gx,) = torch.autograd.grad(got.y.sum(), xs)
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(ssd_ref(xr, dt, A, B, C).y.sum(), xr)
    torch.testing.assert_close(gx, gr, atol=1e-5, rtol=1e-5)


def test_scan_errors_name_the_argument():
    x, dt, A, B, C, S0 = scan_inputs()
    with pytest.raises(ValueError, match="dt"):
        ssd_ref(x, dt[:, :-1], A, B, C)
    with pytest.raises(ValueError, match="B: its 3 groups"):
        ssd_ref(x, dt, A, torch.randn(2, 23, 3, 5), torch.randn(2, 23, 3, 5))
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunked(x, dt, A, B, C, S0[:, :1])
    with pytest.raises(ValueError, match="backend"):
        ssd_scan(x, dt, A, B, C, backend="loop")


@pytest.mark.parametrize("backend", ["ref", "chunked", "triton"])
def test_model_backends_agree(backend):
    if backend == "triton" and "triton" not in seqlens.models.kernels.available_backends(
            torch.cuda.is_available())["ssd"]:
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    model = make("mamba2")
    toks = tokens(2, 13)
    with torch.no_grad():
        base = model.set_backend("ref")(toks)
        model.set_backend(backend)
        torch.testing.assert_close(model(toks), base, atol=1e-5, rtol=1e-4)
        with model.tap_states([3, 12]):  # taps and the carried state through this backend
            _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_state"))
        st = model.stream(toks, chunk_size=5).state
    model.set_backend("ref")
    with torch.no_grad(), model.tap_states([3, 12]):
        _, want = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_state"))
    for k in want:
        torch.testing.assert_close(cache[k], want[k], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st.layers[1]["ssm"], model.stream(toks, chunk_size=5).state.layers[1]["ssm"],
                               atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- transformers parity


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}

    def get(groups: int = 2, tied: bool = False):
        if (groups, tied) not in cache:
            hf = random_hf_mamba2(groups, tied)
            directory = tmp_path_factory.mktemp(f"mamba2_{groups}_{tied}")
            hf.save_pretrained(directory)
            cache[groups, tied] = (hf, seqlens.load(str(directory)), directory)
        return cache[groups, tied]
    return get


def hf_logits(hf, toks):
    with torch.no_grad():
        return hf(toks).logits


@pytest.mark.parametrize("groups,tied", [(2, False), (1, True), (8, False)])
def test_logits_match_transformers(converted, groups, tied):
    hf, ours, _ = converted(groups, tied)
    assert ours.cfg.arch == "mamba2" and ours.cfg.n_bc_groups == groups
    for length in (1, 7, 40):  # 40 crosses transformers' chunk of 16 and ours of 64
        toks = tokens(length, length)[:1] % 101
        ref = hf_logits(hf, toks)
        assert ref.std() > 0.3, "logits too small for the tolerance to mean anything"
        with torch.no_grad():
            assert (ours(toks) - ref).abs().max().item() < 1e-4


def test_step_and_stream_match_transformers(converted):
    hf, ours, _ = converted()
    toks = tokens(2, 37) % 101
    ref = hf_logits(hf, toks)
    assert (ours.stream(toks, chunk_size=5).logits - ref).abs().max().item() < 1e-4
    state, steps = ours.init_state(2), []
    for t in range(toks.shape[1]):
        lo, state = ours.step(toks[:, t], state)
        steps.append(lo)
    assert (torch.stack(steps, 1) - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("groups", [1, 2])
def test_left_padding_matches_transformers(converted, groups):
    """Left-padded batch: our logits at the real positions equal transformers' batched with its
    attention_mask and transformers' on each prompt alone. (transformers zeroes the padded hidden
    states and x, B, C after the conv: exact without in_proj bias, as here; conv bias perturbed.)"""
    hf, ours, _ = converted(groups)
    g = torch.Generator().manual_seed(groups)
    seqs = [torch.randint(1, 101, (n,), generator=g) for n in (13, 3, 8)]
    L = max(len(s) for s in seqs)
    toks, mask = torch.full((3, L), 7), torch.zeros(3, L, dtype=torch.long)  # pad id 7: a real token
    for r, s in enumerate(seqs):
        toks[r, L - len(s):], mask[r, L - len(s):] = s, 1
    with torch.no_grad():
        batched = ours(toks, attention_mask=mask)
        theirs = hf(toks, attention_mask=mask).logits
        for r, s in enumerate(seqs):
            real = mask[r].bool()
            assert (batched[r][real] - hf_logits(hf, s[None])[0]).abs().max().item() < 1e-4
            assert (batched[r][real] - theirs[r][real]).abs().max().item() < 1e-4


def test_head_finders_and_lrp_run_on_a_converted_checkpoint(converted):
    from seqlens.circuits.lrp import attribute
    from seqlens.circuits.token_heads import induction_scores

    _, ours, _ = converted(2)
    scores = induction_scores(ours, seq_len=24, batch=2, seed=0).scores
    assert scores.shape == (2, 8) and torch.isfinite(scores).all()
    result = attribute(ours, tokens(1, 10) % 101)
    assert result.method == "mambalrp" and torch.isfinite(result.relevance).all()
    assert result.relevance.abs().sum() > 0


def test_state_matches_transformers_cache(converted):
    """Our carried ssm state is transformers' recurrent state (same [B, H, P, N] layout)."""
    hf, ours, _ = converted()
    toks = tokens(1, 21) % 101
    with torch.no_grad():
        out = hf(toks, use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.cache_params
    theirs = cache.get_recurrent_state(0, state_idx=0) if hasattr(cache, "get_recurrent_state") \
        else cache.ssm_states[0]
    state = ours.stream(toks, chunk_size=8).state
    torch.testing.assert_close(state.layers[0]["ssm"], theirs.float(), atol=1e-5, rtol=1e-4)


def test_from_loaded_model_and_errors(converted, tmp_path: Path):
    hf, _, directory = converted()
    ours = from_hf(hf)
    toks = tokens(1, 9) % 101
    with torch.no_grad():
        assert (ours(toks) - hf_logits(hf, toks)).abs().max().item() < 1e-4
    cfg = json.loads((directory / "config.json").read_text())
    bad = tmp_path / "limit"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "time_step_limit": [0.0, 0.5]}))
    with pytest.raises(NotImplementedError, match="time_step_limit"):
        from_hf(bad)
    wrong = tmp_path / "groups"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({**cfg, "n_groups": 4}))
    (wrong / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="in_proj.weight"):
        from_hf(wrong)


# ----------------------------------------------------------------------------- implicit attention


def test_implicit_attention_rebuilds_scan_output():
    model = make("mamba2")
    toks = tokens(2, 30)
    _, cache = model.run_with_cache(toks)
    for layer, block in enumerate(model.blocks):
        mixer = block.mixer
        alpha = model.mixer_pattern(toks, layer)  # [B, H, L, L]
        assert alpha.shape == (2, model.cfg.n_heads, 30, 30)
        assert alpha.triu(1).abs().max() == 0
        u = cache[f"blocks.{layer}.mixer.hook_conv"]  # [B, L, H, P]
        rebuilt = torch.einsum("bhts,bshp->bthp", alpha, u) + mixer.D[:, None] * u
        torch.testing.assert_close(rebuilt, cache[f"blocks.{layer}.mixer.hook_z"], atol=1e-5, rtol=1e-4)


def test_pattern_small_budget_same_result():
    model = make("mamba2")
    x = model.mixer_input(tokens(2, 13), 1)
    torch.testing.assert_close(model.blocks[1].mixer.pattern(x, budget=1), model.blocks[1].mixer.pattern(x),
                               atol=1e-7, rtol=1e-6)


def test_implicit_attention_brute_force_from_hooks():
    """α_{t,s} = (C_t·B_s)·exp(Σ_{k=s+1..t} Δ_k A_h)·Δ_s computed entry by entry from the hooks."""
    model = make("mamba2")
    toks = tokens(1, 9)
    _, cache = model.run_with_cache(toks)
    mixer, cfg = model.blocks[1].mixer, model.cfg
    alpha = model.mixer_pattern(toks, 1)[0]
    delta, Bm, Cm = (cache[f"blocks.1.mixer.hook_{k}"][0].double() for k in ("delta", "B", "C"))
    A = mixer.A.detach().double()
    per_group = cfg.n_heads // cfg.n_bc_groups
    for h in (0, 1, 3):
        g = h // per_group
        for t in range(9):
            for s in range(9):
                want = 0.0 if s > t else float(Cm[t, g] @ Bm[s, g]) * float(
                    torch.exp(delta[s + 1:t + 1, h].sum() * A[h])) * float(delta[s, h])
                assert abs(float(alpha[h, t, s]) - want) < 1e-5 * (1 + abs(want))


def test_decay_gates_and_chunk_decay_follow_delta():
    model = make("mamba2")
    mixer = model.blocks[0].mixer
    _, cache = model.run_with_cache(tokens(1, 12))
    delta = cache["blocks.0.mixer.hook_delta"]
    decay = mixer.decay({"hook_delta": delta})
    torch.testing.assert_close(decay, torch.exp(delta * mixer.A))
    assert decay.shape == (1, 12, model.cfg.n_heads) and bool(((decay > 0) & (decay < 1)).all())
    (gate,) = mixer.gates()
    torch.testing.assert_close(gate.transform(delta), decay)
    # the chunk decay is the product of the per-token decays, broadcast over the [B, H, P, N] state
    chunk = mixer.log_chunk_decay({"hook_delta": delta}).exp()
    torch.testing.assert_close(chunk[:, :, 0, 0].float(), decay.prod(1), rtol=1e-5, atol=1e-7)


def test_state_window_subtracts_exactly():
    """The recurrence is linear: the state after [0, L) minus the decayed state after [0, k)
    equals the state of [k, L) run from zeros (what state_window relies on)."""
    model = make("mamba2")
    mixer = model.blocks[0].mixer
    x = model.mixer_input(tokens(1, 20), 0)
    p = mixer.ssm_inputs(x, None)
    full = ssd_ref(p["u"], p["delta"], mixer.A, p["B"], p["C"]).final_state
    head = ssd_ref(p["u"][:, :8], p["delta"][:, :8], mixer.A, p["B"][:, :8], p["C"][:, :8]).final_state
    tail = ssd_ref(p["u"][:, 8:], p["delta"][:, 8:], mixer.A, p["B"][:, 8:], p["C"][:, 8:]).final_state
    carried = head * mixer.log_chunk_decay({"hook_delta": p["delta"][:, 8:]}).exp().float()
    torch.testing.assert_close(full - carried, tail, atol=1e-5, rtol=1e-4)


def test_ov_factors_shapes_and_zero_gain_head():
    model = make("mamba2")
    mixer = model.blocks[0].mixer
    W_V, W_O, kind = mixer.ov_factors()
    H, P, d = model.cfg.n_heads, mixer.head_dim, model.cfg.d_model
    assert W_V.shape == (H, d, P) and W_O.shape == (H, P, d) and kind == "mamba"
    with torch.no_grad():
        mixer.conv1d.weight[P:2 * P] = 0.0  # head 1's x channels: zero conv gain, no OV path
    W_V, _, _ = mixer.ov_factors()
    assert W_V[1].abs().max() == 0 and W_V[0].abs().max() > 0
