"""Gated linear attention kernels (models/kernels/linear_attention*.py), one file for the op: the
chunked form equals the step-loop reference (outputs, states, taps, gradients, continuation, the
implicit attention matrix); the Triton path equals
the step-loop reference in outputs, final state, tapped states and every gradient; the dispatcher
validates its arguments; the GLA / RetNet mixers run unchanged on the Triton path.

Without CUDA the Triton kernels run in Triton's CPU interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1``), so the shapes stay small; on a GPU the same tests compile the kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlens.models.kernels import dispatch
from seqlens.models.gla import gla_attention_matrix
from seqlens.models.kernels.linear_attention import gated_linear_attention, gla_chunked, gla_recurrent_ref
from seqlens.testing.tiny import make, tokens

pytest.importorskip("triton")

B, H = 2, 2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 5e-3  # relative RMS error allowed against the float64 reference


def rel_rms(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖got − ref‖ / ‖ref‖`` (relative RMS error), in float64."""
    return ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def log_gates(T: int, dk: int, gen: torch.Generator, strength: float) -> torch.Tensor:
    """``[B, T, H, dk]`` log gates: ``logsigmoid`` of random logits; ``strength`` scales them, and
    ``strength=inf`` gives uniform gates in ``[-5, 0]`` with a few near-``-inf`` (``-1e4``) ones."""
    if strength == float("inf"):
        g = -5.0 * torch.rand(B, T, H, dk, generator=gen, dtype=torch.float64)
        return g.masked_fill(torch.rand(B, T, H, dk, generator=gen) < 0.03, -1e4)
    return F.logsigmoid(strength * torch.randn(B, T, H, dk, generator=gen, dtype=torch.float64) + 1.0)


def make_case(T: int, dk: int, dv: int, gated: bool, strength: float, seed: int = 0) -> dict:
    """float64 inputs ``q, k, v, gate, initial_state``; ``gate`` is ``g`` (:func:`log_gates`) when
    ``gated``, else a per-head ``decay``: RetNet's ``log γ_h`` for ``strength ≤ 1``, uniform in
    ``[-strength, 0]`` above."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if gated:
        gate = log_gates(T, dk, gen, strength)
    elif strength <= 1:
        gate = torch.log1p(-torch.exp2(-5.0 - 2.0 * torch.arange(H, dtype=torch.float64)))
    else:
        gate = -strength * torch.rand(H, generator=gen, dtype=torch.float64)
    return {"q": r(B, T, H, dk), "k": r(B, T, H, dk), "v": r(B, T, H, dv), "gate": gate,
            "initial_state": r(B, H, dk, dv)}


def run(case: dict, backend: str, dtype: torch.dtype, gated: bool, init: bool, taps: list[int] | None):
    """Forward through the dispatcher in ``dtype``; return the result and the gradients of every
    leaf of a loss weighting the output, the final state and the taps."""
    leaves = {n: t.to(DEVICE, dtype).requires_grad_() for n, t in case.items() if init or n != "initial_state"}
    gate = {"g": leaves["gate"]} if gated else {"decay": leaves["gate"]}
    res = gated_linear_attention(leaves["q"], leaves["k"], leaves["v"], **gate, initial_state=leaves.get(
        "initial_state"), tap_positions=taps, backend=backend)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE, t.dtype)).sum()
               for t in res if t is not None)
    return res, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def run_no_grad(case: dict, dtype: torch.dtype, taps: list[int], backend: str = "triton"):
    """Forward only, every leaf in ``dtype``, gated, with the initial state."""
    t = {n: x.to(DEVICE, dtype) for n, x in case.items()}
    return gated_linear_attention(t["q"], t["k"], t["v"], g=t["gate"], initial_state=t["initial_state"],
                                  tap_positions=taps, backend=backend)


CB, CH, DK, DV = 2, 3, 8, 5  # the chunked-form tests' shapes (batch, heads, d_k, d_v)


def chunk_inputs(T: int, dtype=torch.float32, strength: float = 1.0, seed: int = 0):
    """Random ``q, k, log_g [CB, T, CH, DK]``, ``v [CB, T, CH, DV]``, initial state; ``strength``
    scales the gate logits (large: strong, varied decays)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(CB, T, CH, DK), r(CB, T, CH, DK), r(CB, T, CH, DV)
    log_g = F.logsigmoid(strength * r(CB, T, CH, DK) + 1.0)
    S0 = r(CB, CH, DK, DV)
    return [t.to(dtype) for t in (q, k, v, log_g, S0)]


# ----------------------------------------------------------------------------- chunked form vs step loop (PyTorch)


@pytest.mark.parametrize("T,chunk", [(1, 64), (37, 8), (64, 16), (65, 64), (100, 64), (23, 5)])
def test_chunked_equals_recurrent_ref(T, chunk):
    taps = torch.tensor(sorted({0, T // 3, T // 2, T - 1}))
    for dtype, atol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        q, k, v, log_g, S0 = chunk_inputs(T, dtype)
        for init in (None, S0):
            ref = gla_recurrent_ref(q, k, v, log_g, init, taps=taps)
            got = gla_chunked(q, k, v, log_g, init, taps=taps, chunk_size=chunk)
            assert got.o.dtype == dtype
            for name, a, b in zip(("o", "final_state", "taps"), got, ref):
                msg = f"{name} {dtype} init={init is not None}"
                torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=msg)


def test_chunked_is_stable_under_strong_decay():
    # log g down to about -40 per step: within a 64-chunk the factorised form e^{b_t}·e^{-b_s}
    # would overflow; the masked differences must not
    q, k, v, log_g, S0 = chunk_inputs(130, strength=40.0)
    got = gla_chunked(q, k, v, log_g, S0, chunk_size=64)
    ref = gla_recurrent_ref(q, k, v, log_g, S0)
    assert torch.isfinite(got.o).all() and log_g.min() < -30
    torch.testing.assert_close(got.o, ref.o, atol=1e-5, rtol=1e-5)


def test_chunked_gradients_equal_reference():
    q, k, v, log_g, S0 = (t.requires_grad_() for t in chunk_inputs(19, torch.float64))
    leaves = {"q": q, "k": k, "v": v, "log_g": log_g, "initial_state": S0}
    w = torch.randn(CB, 19, CH, DV, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for res in (gla_recurrent_ref(q, k, v, log_g, S0), gla_chunked(q, k, v, log_g, S0, chunk_size=4)):
        loss = (res.o * w).sum() + res.final_state.sum()
        grads.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, a, b in zip(leaves, *grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("split", [1, 7, 16, 40])
def test_state_continuation_equals_one_pass(split):
    q, k, v, log_g, S0 = chunk_inputs(41)
    full = gla_chunked(q, k, v, log_g, S0, chunk_size=8)
    first = gla_chunked(q[:, :split], k[:, :split], v[:, :split], log_g[:, :split], S0, chunk_size=8)
    tail = (t[:, split:] for t in (q, k, v, log_g))
    rest = gla_chunked(*tail, first.final_state, chunk_size=8)
    torch.testing.assert_close(torch.cat([first.o, rest.o], 1), full.o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest.final_state, full.final_state, atol=1e-5, rtol=1e-5)


def test_attention_matrix_rebuilds_output_and_is_causal():
    q, k, v, log_g, _ = chunk_inputs(30, torch.float64, strength=3.0)
    alpha = gla_attention_matrix(q, k, log_g)
    assert alpha.shape == (CB, CH, 30, 30) and alpha.triu(1).abs().max() == 0
    rebuilt = torch.einsum("bhts,bshd->bthd", alpha, v)
    torch.testing.assert_close(rebuilt, gla_recurrent_ref(q, k, v, log_g).o, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gla_attention_matrix(q, k, log_g, budget=1), alpha, atol=0, rtol=0)


def test_bad_shapes_raise():
    q, k, v, log_g, S0 = chunk_inputs(5)
    with pytest.raises(ValueError, match="q, k, log_g"):
        gla_chunked(q, k[:, :4], v, log_g)
    with pytest.raises(ValueError, match="initial_state"):
        gla_chunked(q, k, v, log_g, S0[:, :1])
    with pytest.raises(ValueError, match="chunk_size"):
        gla_chunked(q, k, v, log_g, chunk_size=0)
    empty = gla_chunked(q[:, :0], k[:, :0], v[:, :0], log_g[:, :0], S0)
    assert empty.o.shape == (CB, 0, CH, DV) and torch.equal(empty.final_state, S0)


# ----------------------------------------------------------------------------- triton vs reference

CASES = [  # T, d_k, d_v, gated, strength, initial state, taps
    pytest.param(1, 16, 16, True, 1.0, True, [0], id="T1-gla-init"),
    pytest.param(17, 16, 32, False, 5.0, False, [0, 5, 16], id="T17-retnet-strong-kv16x32"),
    pytest.param(45, 32, 16, True, 2.0, True, [0, 20, 44], id="T45-gla-init-kv32x16"),
    # the two multi-chunk cases take seconds in the interpreter: slow (they still run in CI)
    pytest.param(100, 16, 16, True, float("inf"), False, [0, 37, 63, 64, 99], id="T100-gla-strong",
                 marks=pytest.mark.slow),
    pytest.param(128, 16, 16, False, 1.0, True, [0, 15, 16, 64, 127], id="T128-retnet-init",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("T,dk,dv,gated,strength,init,taps", CASES)
def test_triton_equals_reference(T, dk, dv, gated, strength, init, taps):
    case = make_case(T, dk, dv, gated, strength)
    got, got_grads = run(case, "triton", torch.float32, gated, init, taps)
    ref, ref_grads = run(case, "ref", torch.float64, gated, init, taps)
    assert got.o.dtype == torch.float32 and got.final_state.dtype == torch.float32
    for name, a, b in zip(("o", "final_state", "taps"), got, ref):
        assert torch.isfinite(a).all(), name
        assert rel_rms(a, b) < TOL, f"{name}: relative RMS error {rel_rms(a, b):.2e}"
    for name in ref_grads:
        a, b = got_grads[name], ref_grads[name]
        assert a.shape == b.shape and torch.isfinite(a).all(), name
        assert rel_rms(a, b) < TOL, f"d{name}: relative RMS error {rel_rms(a, b):.2e}"


def test_minus_infinity_gates_stay_finite():
    # a gate of exactly -inf (log g = -inf: the state is wiped) must not produce NaN from -inf - -inf
    case = make_case(40, 16, 16, True, 1.0)
    case["gate"][:, 3] = float("-inf")
    case["gate"][:, 20, :, :5] = float("-inf")  # a later sub-chunk, some key dimensions
    got, grads = run(case, "triton", torch.float32, True, True, [2, 3, 30])
    ref, ref_grads = run(case, "ref", torch.float64, True, True, [2, 3, 30])
    for name, a, b in [*zip(("o", "final_state", "taps"), got, ref),
                       *((f"d{n}", grads[n], ref_grads[n]) for n in grads)]:
        assert torch.isfinite(a).all() and rel_rms(a, b) < TOL, f"{name}: error {rel_rms(a, b):.2e}"


def test_gate_gradients_stay_accurate_under_extreme_decay():
    # the gradients of decays of e^-10 and e^-20 per step are tiny (about 3e-3 and 5e-8); each
    # must still match (the reverse-cumsum identity leaves ~1e-4 of absolute noise on them)
    case = make_case(40, 16, 16, False, 1.0)
    case["gate"] = torch.tensor([-10.0, -20.0], dtype=torch.float64)
    _, got = run(case, "triton", torch.float32, False, True, [5, 39])
    _, ref = run(case, "ref", torch.float64, False, True, [5, 39])
    torch.testing.assert_close(got["gate"].double(), ref["gate"], rtol=1e-4, atol=0)


def test_half_precision_inputs():
    case = make_case(45, 16, 32, True, 2.0)
    with torch.no_grad():
        got = run_no_grad(case, torch.float16, [10, 44])
        ref = run_no_grad({n: t.half() for n, t in case.items()}, torch.float64, [10, 44], backend="ref")
    assert got.o.dtype == torch.float16 and got.final_state.dtype == torch.float32
    for name, a, b in zip(("o", "final_state", "taps"), got, ref):
        assert rel_rms(a, b) < TOL, f"{name}: relative RMS error {rel_rms(a, b):.2e}"
    _, grads = run(case, "triton", torch.float16, True, True, None)
    assert all(g.dtype == torch.float16 and torch.isfinite(g).all() for g in grads.values())


def test_backends_agree_and_empty_inputs():
    case = make_case(20, 16, 16, True, 1.0)
    with torch.no_grad():
        outs = {be: run_no_grad(case, torch.float32, [3, 19], be) for be in ("triton", "chunked", "ref")}
    for be in ("triton", "chunked"):
        for name, a, b in zip(("o", "final_state", "taps"), outs[be], outs["ref"]):
            assert rel_rms(a, b) < TOL, f"{be} {name}"
    empty = {n: (x[:, :0] if n != "initial_state" else x) for n, x in case.items()}
    for be in ("triton", "chunked", "ref"):
        res = run_no_grad(empty, torch.float32, [], be)
        assert res.o.shape == (B, 0, H, 16) and res.taps.shape == (B, 0, H, 16, 16)
        torch.testing.assert_close(res.final_state, empty["initial_state"].float().to(DEVICE))


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_raise():
    c = {n: t.float() for n, t in make_case(5, 16, 8, True, 1.0).items()}
    q, k, v, g, S0 = c["q"], c["k"], c["v"], c["gate"], c["initial_state"]
    decay = torch.full((H,), -0.1)
    with pytest.raises(ValueError, match="g, decay: .*both"):
        gated_linear_attention(q, k, v, g=g, decay=decay)
    with pytest.raises(ValueError, match="g, decay: .*neither"):
        gated_linear_attention(q, k, v)
    bad = {"k": dict(k=k[:, :4]), "v": dict(v=v[:, :, :1]), "g": dict(g=g[..., :3]),
           "initial_state": dict(initial_state=S0[:, :1])}
    for name, kw in bad.items():
        args = {"k": k, "v": v, "g": g, **kw}
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            gated_linear_attention(q, args["k"], args["v"], g=args["g"], initial_state=kw.get("initial_state"))
    with pytest.raises(ValueError, match="decay: expected shape \\[H\\]"):
        gated_linear_attention(q, k, v, decay=torch.zeros(H + 1))
    with pytest.raises(ValueError, match="q: expected shape"):
        gated_linear_attention(q[0], k[0], v[0], g=g[0])
    with pytest.raises(ValueError, match="tap_positions"):
        gated_linear_attention(q, k, v, g=g, tap_positions=[3, 1])
    with pytest.raises(ValueError, match="tap_positions"):
        gated_linear_attention(q, k, v, g=g, tap_positions=[5])
    with pytest.raises(ValueError, match="backend"):
        gated_linear_attention(q, k, v, g=g, backend="cuda")


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    c = make_case(5, 16, 16, True, 1.0)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        gated_linear_attention(c["q"].float(), c["k"].float(), c["v"].float(), g=c["gate"].float(),
                               backend="triton")


# ----------------------------------------------------------------------------- mixers


@pytest.mark.parametrize("name", ["gla", "retnet"])
def test_mixers_on_the_triton_path(name):
    # force each backend in turn through the mixers' one switch (Triton on CPU included)
    model = make(name).to(DEVICE)
    toks = tokens(2, 21).to(DEVICE)
    runs = {}
    for backend in ("chunked", "triton"):
        model.set_backend(backend)
        assert all(b.mixer.backend == backend for b in model.blocks)
        with model.tap_states([0, 20]):
            runs[backend] = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_state"))
    (logits, cache), (got, got_cache) = runs["chunked"], runs["triton"]
    assert rel_rms(got, logits) < 1e-4
    assert set(got_cache) == set(cache) and len(cache) == model.cfg.n_layers
    for key in cache:
        assert rel_rms(got_cache[key], cache[key]) < TOL, key


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_larger_shape():
    gen = torch.Generator().manual_seed(0)
    Bg, T, Hg, dk, dv = 2, 1000, 4, 64, 128
    r = lambda *s: torch.randn(*s, generator=gen).cuda()  # noqa: E731
    q, k, v = (r(Bg, T, Hg, d).bfloat16().requires_grad_() for d in (dk, dk, dv))
    g = F.logsigmoid(4 * r(Bg, T, Hg, dk) + 2).requires_grad_()
    S0 = r(Bg, Hg, dk, dv).requires_grad_()
    taps = [0, 511, 999]
    w = r(Bg, T, Hg, dv)
    outs = []
    for backend, cast in (("triton", lambda t: t), ("chunked", lambda t: t.float())):
        res = gated_linear_attention(cast(q), cast(k), cast(v), g=g, initial_state=S0, tap_positions=taps,
                                     backend=backend)
        loss = (res.o.float() * w).sum() + res.final_state.sum() + res.taps.sum()
        outs.append((res, torch.autograd.grad(loss, [q, k, v, g, S0])))
    (got, got_grads), (ref, ref_grads) = outs
    assert got.o.dtype == torch.bfloat16
    assert rel_rms(got.o, ref.o) < 1e-2  # o is rounded to bf16
    for a, b in [*zip(got[1:], ref[1:]), *zip(got_grads, ref_grads)]:
        assert rel_rms(a, b) < 1e-2
