"""Elementwise linear recurrence ``h_t = a_t ⊙ h_{t−1} + b_t``: the Triton kernel (through the CPU
interpreter here, compiled on a GPU machine) and the log-space scan equal the sequential reference
in outputs, final state, taps and gradients; errors name the argument; the minGRU / minLSTM models
give the same output as before the scan moved into ``kernels``."""

from __future__ import annotations


import pytest
import torch

import seqlens.models.mingru as mingru
from seqlens.testing.backends import backends  # noqa: E402
from seqlens.models.kernels.linear_recurrence import (
    RecurrenceOutput,
    linear_recurrence,
    linear_recurrence_ref,
    mingru_scan,
    mingru_scan_ref,
)
from seqlens.testing.recurrence import random_recurrence
from seqlens.testing.tiny import make, tokens

triton_lr = pytest.importorskip("seqlens.models.kernels.linear_recurrence_triton")

RTOL, ATOL = 6e-4, 2e-3
B, D = 2, 40  # D is not a multiple of any BLOCK_D used here (16 and the default 64)


def inputs(L: int, dtype=torch.float32, seed: int = 0, signed: bool = False, device="cpu", dim: int = D):
    """Decays a (in (0, 1), or in (−1, 1) when ``signed``), writes b, initial state h0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.sigmoid(2 * torch.randn(B, L, dim, generator=g) + 1)
    if signed:
        a = 2 * a - 1
    b = torch.randn(B, L, dim, generator=g)
    h0 = torch.randn(B, dim, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (a, b, h0)]


def run(backend: str, a, b, h0, taps):
    """Outputs and the gradients of a weighted sum of all outputs w.r.t. (a, b, h0)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (a, b, h0)]
    out = linear_recurrence(*leaves, tap_positions=taps, backend=backend)
    g = torch.Generator().manual_seed(1)
    loss = (out.h * torch.randn(out.h.shape, generator=g).to(out.h)).sum()
    loss = loss + (out.final_state * torch.randn(out.final_state.shape, generator=g).to(out.h)).sum()
    if out.taps is not None:
        loss = loss + (out.taps * torch.randn(out.taps.shape, generator=g).to(out.h)).sum()
    loss.backward()
    grads = {n: t.grad for n, t in zip(("a", "b", "h0"), leaves) if t is not None}
    return out, grads


def assert_same(got, want, rtol=RTOL, atol=ATOL):
    """Compare two ``run`` results field by field, gradients included."""
    (out, grads), (ref, ref_grads) = got, want
    for name in RecurrenceOutput._fields:
        x, y = getattr(out, name), getattr(ref, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol, atol=atol,
                                   msg=lambda m: f"d/d{name}: {m}")


def tap_list(L: int) -> list[int]:
    """First, an arbitrary middle and the last position."""
    return sorted({0, L // 3, L - 1})


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("L", [1, 37, 100])
@pytest.mark.parametrize("backend", backends("triton", "loop", "chunked"))
def test_backend_equals_reference(backend, L, with_h0, monkeypatch):
    monkeypatch.setattr(triton_lr, "MAX_BLOCK_D", 16)  # three channel blocks, the last ragged
    a, b, h0 = inputs(L, seed=L)
    h0 = h0 if with_h0 else None
    want = run("ref", a, b, h0, tap_list(L))
    assert_same(run(backend, a, b, h0, tap_list(L)), want)
    assert want[0].taps.shape == (B, len(tap_list(L)), D)


@pytest.mark.parametrize("L", [37, 100])
def test_triton_negative_decays(L):
    """The reference and Triton paths accept any real a; the log-space scan refuses a < 0."""
    a, b, h0 = inputs(L, seed=3, signed=True)
    assert (a < 0).any()
    assert_same(run("triton", a, b, h0, [L - 1]), run("ref", a, b, h0, [L - 1]))
    assert_same(run("loop", a, b, h0, [L - 1]), run("ref", a, b, h0, [L - 1]))
    with pytest.raises(ValueError, match="a: the log-space scan needs decays"):
        linear_recurrence(a, b, h0, backend="chunked")


@pytest.mark.parametrize("backend", backends("triton", "loop", "chunked"))
def test_half_inputs(backend):
    """fp16 inputs run in fp32 and return fp32 states; gradients come back in fp16."""
    a, b, h0 = inputs(37, dtype=torch.float16, seed=4)
    got, want = run(backend, a, b, h0, [5]), run("ref", a, b, h0, [5])
    assert got[0].h.dtype == torch.float32 and got[1]["a"].dtype == torch.float16
    assert_same(got, want)


@pytest.mark.parametrize("backend", backends("triton", "loop", "chunked"))
def test_float64_is_exact(backend):
    a, b, h0 = inputs(37, dtype=torch.float64, seed=5)
    got, want = run(backend, a, b, h0, None), run("ref", a, b, h0, None)
    assert got[0].h.dtype == torch.float64 and got[0].taps is None
    assert_same(got, want, rtol=1e-10, atol=1e-10)


def test_triton_strided_inputs():
    """Transposed / sliced views are read through their strides, without copies."""
    a, b, h0 = inputs(37, seed=6)
    a_t = a.transpose(1, 2).contiguous().transpose(1, 2)  # stride(2) != 1
    b_s = torch.stack([b, -b], dim=-1)[..., 0]  # every other channel of a wider tensor
    h0_s = torch.stack([h0, h0], dim=-1)[..., 0]
    assert not (a_t.is_contiguous() or b_s.is_contiguous() or h0_s.is_contiguous())
    assert_same(run("triton", a_t, b_s, h0_s, [3]), run("ref", a, b, h0, [3]))


@pytest.mark.parametrize("backend", backends("triton", "loop", "chunked", "ref"))
def test_empty_sequence(backend):
    a, b, h0 = inputs(0, seed=7)
    out = linear_recurrence(a, b, h0, backend=backend)
    assert out.h.shape == (B, 0, D) and torch.equal(out.final_state, h0)


def test_auto_is_the_loop_on_cpu_and_equals_the_reference():
    a, b, h0 = inputs(37, seed=8)
    assert torch.equal(linear_recurrence(a, b, h0).h, linear_recurrence(a, b, h0, backend="loop").h)
    torch.testing.assert_close(linear_recurrence(a, b, h0, backend="loop").h, mingru_scan_ref(a, b, h0),
                               rtol=1e-6, atol=1e-6)  # addcmul may fuse the multiply-add


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", backends("triton", "loop", "chunked", "ref"))
def test_errors_name_the_argument(backend):
    a, b, h0 = inputs(10, seed=9)
    cases = [
        (ValueError, "a: expected shape", (a[0], b[0], None), {}),
        (ValueError, "b: expected shape", (a, b[:, :5], h0), {}),
        (ValueError, "h0: expected shape", (a, b, h0[:1]), {}),
        (TypeError, "b: expected a real floating", (a, b.long(), h0), {}),
        (ValueError, "tap_positions: position 10 is out of range", (a, b, h0), {"tap_positions": [10]}),
        (ValueError, "tap_positions: must be sorted", (a, b, h0), {"tap_positions": [4, 2]}),
    ]
    for exc, match, args, kw in cases:
        with pytest.raises(exc, match=match):
            linear_recurrence(*args, backend=backend, **kw)
    with pytest.raises(ValueError, match="backend: expected"):
        linear_recurrence(a, b, h0, backend="cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a, b, h0 = inputs(4)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        linear_recurrence(a, b, h0, backend="triton")


# ----------------------------------------------------------------------------- models


def old_recur(a, b, h0):
    """``MinRNNMixer.recur`` before the dispatcher: direct step for one token, else the scan."""
    if a.shape[1] == 1:
        a, b = a.float(), b.float()
        return b if h0 is None else a * h0.float()[:, None] + b
    return mingru_scan(a, b, h0)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_model_output_unchanged(name, monkeypatch):
    """On CPU (the loop backend) the model equals the log-space scan it used before to float32
    rounding; through the Triton path it agrees likewise, gradients included."""
    model, toks = make(name), tokens(2, 33)
    logits = model(toks)
    with monkeypatch.context() as m:
        m.setattr(mingru.MinRNNMixer, "recur", staticmethod(old_recur))
        torch.testing.assert_close(model(toks), logits, rtol=1e-5, atol=1e-6)
    grads = {}
    for backend in ("auto", "triton"):
        model.zero_grad()
        model.set_backend(backend)  # the mixers' one backend switch (SeqModel.set_backend)
        out = model(toks)
        out.logsumexp(-1).sum().backward()
        grads[backend] = [p.grad.clone() for p in model.parameters()]
        torch.testing.assert_close(out, logits, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads["triton"], grads["auto"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernel_on_gpu(dtype):
    """The compiled kernel (auto picks it on CUDA) against the reference, longer and wider."""
    a, b, h0 = inputs(1000, dtype=dtype, seed=10, signed=True, device="cuda", dim=300)
    assert linear_recurrence(a, b, h0).h.is_cuda
    assert_same(run("auto", a, b, h0, [0, 500, 999]), run("ref", a, b, h0, [0, 500, 999]))


# ----------------------------------------------------------------------------- minGRU's log-space scan
# (moved from test_mingru.py: one file per op)


@pytest.mark.parametrize("L", [1, 37, 200])  # 200 spans several log-space chunks
def test_scan_equals_sequential_reference(L):
    a, b, h0 = random_recurrence(L, torch.float64)
    exact = mingru_scan_ref(a, b, h0)
    torch.testing.assert_close(mingru_scan(a, b, h0), exact, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mingru_scan(a, b), mingru_scan_ref(a, b), atol=1e-12, rtol=1e-12)
    h32 = mingru_scan(a.float(), b.float(), h0.float())
    assert h32.dtype == torch.float32
    torch.testing.assert_close(h32, exact.float(), atol=1e-5, rtol=0)


def test_scan_gradients_equal_reference():
    a, b, h0 = random_recurrence(70, torch.float64, seed=1)
    weights = torch.randn(a.shape, dtype=torch.float64)
    grads = []
    for scan in (mingru_scan, mingru_scan_ref):
        args = [t.clone().requires_grad_() for t in (a, b, h0)]
        (scan(*args) * weights).sum().backward()
        grads.append([t.grad for t in args])
    for name, got, want in zip(("a", "b", "h0"), *grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9, msg=f"d/d{name}")


def test_scan_zero_state_saturated_and_negative_inputs():
    a, b, h0 = random_recurrence(40, torch.float32, seed=2)
    # a zero initial state (log 0 = −∞) equals no initial state
    torch.testing.assert_close(mingru_scan(a, b, torch.zeros_like(h0)), mingru_scan(a, b))
    # a fully reset gate (a = 0) forgets everything: h = b exactly, with finite gradients
    a0 = torch.zeros_like(a).requires_grad_()
    h = mingru_scan(a0, b, h0)
    assert torch.equal(h, b)
    h.sum().backward()
    assert torch.isfinite(a0.grad).all()
    # negative writes (possible after a hook edit) are handled exactly
    b_signed = b - b.mean()
    torch.testing.assert_close(mingru_scan(a, b_signed, h0), mingru_scan_ref(a, b_signed, h0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="a: the log-space scan needs decays"):
        mingru_scan(-a, b, h0)
