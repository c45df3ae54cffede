"""Attention statistics without the L×L matrix: the Triton kernel (CPU interpreter here, compiled
on a GPU machine) and the chunked path equal the reference; the reference equals an independent
``torch.softmax`` of explicit scores (and ``out`` equals ``scaled_dot_product_attention``); planted
patterns give their known answers, ties included; errors name the argument."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.testing.backends import backends  # noqa: E402
from seqlens.models.kernels.attention_stats import AttentionStats, attention_stats

# the module itself (the package attribute of the same name is the function)
stats_mod = importlib.import_module("seqlens.models.kernels.attention_stats")

triton_stats = pytest.importorskip("seqlens.models.kernels.attention_stats_triton")

B, H = 2, 2
FLOAT_STATS = ("max_prob", "entropy", "sink_mass", "span_mass", "lse")


@pytest.fixture
def small_blocks(monkeypatch):
    """16-row query blocks and 16-key blocks, so L = 33 / 77 spans several ragged blocks."""
    monkeypatch.setattr(triton_stats, "BLOCK_M", 16)
    monkeypatch.setattr(triton_stats, "BLOCK_N", 16)
    monkeypatch.setattr(stats_mod, "DEFAULT_QUERY_BLOCK", 16)


def qkv(L: int, d: int, d_v: int | None = None, dtype=torch.float32, seed: int = 0, device="cpu"):
    """Random q, k, v ``[B, H, L, ·]``, FoX log forget gates ``[B, H, L]`` and per-row spans."""
    g = torch.Generator().manual_seed(seed)
    q = 1.5 * torch.randn(B, H, L, d, generator=g)
    k = torch.randn(B, H, L, d, generator=g)
    v = torch.randn(B, H, L, d_v or d, generator=g)
    log_f = F.logsigmoid(torch.randn(B, H, L, generator=g) + 2.0)
    spans = torch.tensor([[L // 4, L // 2 + 1], [0, L]])
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, log_f)] + [spans.to(device)]


def assert_stats_close(got: AttentionStats, want: AttentionStats, rtol=1e-4, atol=1e-5):
    """Every field, with dtypes; argmax exactly."""
    assert got.out.dtype == want.out.dtype
    torch.testing.assert_close(got.out, want.out, rtol=rtol, atol=atol, msg=lambda m: f"out: {m}")
    for name in FLOAT_STATS:
        x, y = getattr(got, name), getattr(want, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == torch.float32 and x.shape == want.max_prob.shape, name
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    assert got.argmax.dtype == torch.int64
    assert torch.equal(got.argmax, want.argmax)


# ----------------------------------------------------------------------------- backends vs ref


@pytest.mark.parametrize("forget", [False, True], ids=["softmax", "fox"])
@pytest.mark.parametrize("d", [16, 32])
@pytest.mark.parametrize("L", [1, 33, 77])
@pytest.mark.parametrize("backend", backends("triton", "chunked"))
def test_backend_equals_reference(backend, L, d, forget, small_blocks):
    q, k, v, log_f, spans = qkv(L, d, d_v=d + 8, seed=L + d)
    args = dict(log_forget=log_f if forget else None, sink_k=4, span=spans)
    got = attention_stats(q, k, v, backend=backend, **args)
    assert got.backend == backend and got.out.shape == (B, H, L, d + 8)
    assert_stats_close(got, attention_stats(q, k, v, backend="ref", **args))


@pytest.mark.parametrize("span", ["tuple", "tensor", "none"])
@pytest.mark.parametrize("sink_k", [0, 1, 4])
@pytest.mark.parametrize("backend", backends("triton", "chunked"))
def test_sinks_and_spans(backend, sink_k, span, small_blocks):
    q, k, v, log_f, spans = qkv(33, 16, seed=sink_k)
    span_arg = {"tuple": (5, 21), "tensor": spans, "none": None}[span]
    args = dict(log_forget=log_f, sink_k=sink_k, span=span_arg)
    got = attention_stats(q, k, v, backend=backend, **args)
    want = attention_stats(q, k, v, backend="ref", **args)
    assert_stats_close(got, want)
    assert (want.span_mass is None) == (span == "none")
    if sink_k == 0:
        assert torch.equal(got.sink_mass, torch.zeros_like(got.sink_mass))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backends("triton", "chunked"))
def test_half_inputs(backend, dtype, small_blocks):
    """Half inputs are computed in fp32: stats fp32, out in the input dtype."""
    q, k, v, log_f, spans = qkv(33, 16, dtype=dtype, seed=2)
    got = attention_stats(q, k, v, log_f, span=spans, backend=backend)
    want = attention_stats(q, k, v, log_f, span=spans, backend="ref")
    assert got.out.dtype == dtype
    assert_stats_close(got, want, rtol=1e-2, atol=1e-2 if dtype == torch.bfloat16 else 2e-3)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", backends("triton", "chunked"))
def test_strided_inputs_and_custom_scale(backend, small_blocks):
    """q/k/v as the [B, H, L, d] views of [B, L, H, d] projections (what attention mixers hold)."""
    q, k, v, log_f, _ = qkv(33, 16, seed=3)
    q_t, k_t, v_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    log_t = log_f.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_t.is_contiguous()
    got = attention_stats(q_t, k_t, v_t, log_t, scale=0.3, backend=backend)
    assert_stats_close(got, attention_stats(q, k, v, log_f, scale=0.3, backend="ref"))


# ----------------------------------------------------------------------------- ref vs independent


def explicit_scores(q, k, log_f, scale):
    """``scale q·k + (c_i − c_j)`` written out with a loop over queries, causal mask −inf."""
    L = q.shape[2]
    c = None if log_f is None else log_f.cumsum(-1)
    s = torch.full((*q.shape[:2], L, L), float("-inf"), dtype=q.dtype)
    for i in range(L):
        row = scale * (k[:, :, : i + 1] @ q[:, :, i, :, None])[..., 0]
        if c is not None:
            row = row + c[:, :, i, None] - c[:, :, : i + 1]
        s[:, :, i, : i + 1] = row
    return s


@pytest.mark.parametrize("forget", [False, True], ids=["softmax", "fox"])
@pytest.mark.parametrize("L", [1, 33, 77])
def test_reference_equals_softmax_of_scores(L, forget):
    q, k, v, log_f, spans = qkv(L, 16, d_v=24, dtype=torch.float64, seed=4)
    log_f = log_f if forget else None
    got = attention_stats(q, k, v, log_f, sink_k=4, span=spans, backend="ref")
    s = explicit_scores(q, k, log_f, 0.25)
    p = torch.softmax(s, -1)
    j = torch.arange(L)
    in_span = (j >= spans[:, :1]) & (j < spans[:, 1:])
    want = {"max_prob": p.max(-1).values, "lse": torch.logsumexp(s, -1),
            "entropy": -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1),
            "sink_mass": p[..., :4].sum(-1), "span_mass": (p * in_span[:, None, None]).sum(-1)}
    for name, value in want.items():
        torch.testing.assert_close(getattr(got, name), value.float(), rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(got.argmax, p.argmax(-1))
    torch.testing.assert_close(got.out, p @ v, rtol=1e-10, atol=1e-12)
    if log_f is None:
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:  # the FoX bias as an additive mask, −inf above the diagonal
        c = log_f.cumsum(-1)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        bias = (c[..., :, None] - c[..., None, :]).masked_fill(~causal, float("-inf"))
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got.out, sdpa, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- planted answers


@pytest.mark.parametrize("backend", backends("triton", "chunked", "ref"))
def test_uniform_scores(backend, small_blocks):
    """q = 0: every visible key has score 0, so row i is uniform over i + 1 keys: entropy and
    lse = log(i + 1), max_prob = 1/(i + 1), argmax = 0 (ties go to the smallest index, also
    across key blocks), sink mass min(k, i + 1)/(i + 1), out = the running mean of v."""
    L = 40
    q, k, v, _, _ = qkv(L, 16, seed=5)
    res = attention_stats(torch.zeros_like(q), k, v, sink_k=3, span=(10, 20), backend=backend)
    n = torch.arange(1, L + 1, dtype=torch.float32).expand(B, H, L)
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.entropy, n.log(), **close)
    torch.testing.assert_close(res.lse, n.log(), **close)
    torch.testing.assert_close(res.max_prob, 1 / n, **close)
    torch.testing.assert_close(res.sink_mass, n.clamp(max=3) / n, **close)
    torch.testing.assert_close(res.span_mass, (n - 10).clamp(0, 10) / n, **close)
    torch.testing.assert_close(res.out, v.cumsum(2) / n[..., None], **close)
    assert torch.equal(res.argmax, torch.zeros_like(res.argmax))


@pytest.mark.parametrize("backend", backends("triton", "chunked", "ref"))
def test_dominant_key(backend, small_blocks):
    """Key 21 aligned with every query and 30× longer: each row from 21 on puts all its mass
    there (max_prob ≈ 1, argmax 21, entropy ≈ 0, span [21, 22) mass ≈ 1); duplicating it at 29
    changes nothing (ties go to the smallest index)."""
    L, j = 50, 21
    q, k, v, _, _ = qkv(L, 16, seed=6)
    u = torch.randn(16, generator=torch.Generator().manual_seed(0))
    q = u.expand_as(q) + 0.1 * q
    k[:, :, j] = 30 * u
    k[:, :, 29] = 30 * u
    res = attention_stats(q, k, v, sink_k=1, span=(j, j + 1), backend=backend)
    late = slice(j, None)
    assert torch.equal(res.argmax[..., late], torch.full_like(res.argmax[..., late], j))
    assert (res.max_prob[..., late] > 0.5 - 1e-6).all()  # half of the mass each at 21 and 29 ...
    assert (res.span_mass[..., j:29] > 1 - 1e-5).all()  # ... and all of it at 21 before 29
    assert (res.entropy[..., j:29] < 1e-4).all()
    torch.testing.assert_close(res.entropy[..., 29:], torch.full_like(res.entropy[..., 29:], math.log(2)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backends("triton", "chunked", "ref"))
def test_forget_gates_decay_geometrically(backend, small_blocks):
    """q = 0 and a constant forget gate f: p_ij ∝ f^{i−j}, so the newest key wins (argmax = i)
    with max_prob = 1 / Σ_{m ≤ i} f^m."""
    L, f = 37, 0.7
    q, k, v, _, _ = qkv(L, 16, seed=7)
    log_f = torch.full((B, H, L), math.log(f))
    res = attention_stats(torch.zeros_like(q), k, v, log_f, backend=backend)
    i = torch.arange(L, dtype=torch.float64)
    norm = ((1 - f ** (i + 1)) / (1 - f)).float().expand(B, H, L)
    torch.testing.assert_close(res.max_prob, 1 / norm, rtol=1e-5, atol=1e-6)
    assert torch.equal(res.argmax, torch.arange(L).expand(B, H, L))


# ----------------------------------------------------------------------------- contract


def test_results_carry_no_gradient():
    q, k, v, log_f, _ = qkv(9, 16, seed=8)
    q.requires_grad_()
    for backend in ("triton", "chunked", "ref"):
        res = attention_stats(q, k, v, log_f, backend=backend)
        assert not res.out.requires_grad and not res.entropy.requires_grad


@pytest.mark.parametrize("backend", backends("triton", "chunked", "ref"))
def test_errors_name_the_argument(backend):
    q, k, v, log_f, spans = qkv(9, 16, seed=9)
    cases = [
        ("q: expected shape", (q[0], k, v), {}),
        ("k: expected shape", (q, k[..., :8], v), {}),
        ("v: expected shape", (q, k, v[:, :, :5]), {}),
        ("log_forget: expected shape", (q, k, v, log_f[..., :5]), {}),
        ("log_forget: expected finite", (q, k, v, log_f.masked_fill(log_f < 0, float("-inf"))), {}),
        ("sink_k: expected an integer >= 0", (q, k, v), {"sink_k": -1}),
        ("sink_k: expected an integer >= 0", (q, k, v), {"sink_k": True}),
        ("span: expected 0 ≤ start ≤ end ≤ seq_len = 9", (q, k, v), {"span": (3, 10)}),
        ("span: expected 0 ≤ start ≤ end", (q, k, v), {"span": (5, 4)}),
        ("span: expected 0 ≤ start ≤ end", (q, k, v), {"span": torch.tensor([[0, 3], [-1, 2]])}),
        ("span: expected a \\[batch, 2\\]", (q, k, v), {"span": spans[:1]}),
        ("span: expected an integer tensor", (q, k, v), {"span": spans.float()}),
        ("span: expected \\(start, end\\)", (q, k, v), {"span": 3}),
        ("scale: expected a finite float", (q, k, v), {"scale": float("nan")}),
    ]
    for match, args, kw in cases:
        with pytest.raises(ValueError, match=match):
            attention_stats(*args, backend=backend, **kw)
    with pytest.raises(TypeError, match="v: expected a real floating"):
        attention_stats(q, k, v.long(), backend=backend)
    with pytest.raises(ValueError, match="backend: expected"):
        attention_stats(q, k, v, backend="flash")


# ----------------------------------------------------------------------------- GPU


def assert_argmax_near_ties_only(got: Tensor, want: Tensor, q, k, log_f, rtol=1e-5):
    """Argmax indices may differ only between keys whose scores tie to rounding (the compiled
    kernel sums the dot products in another order than the reference's matmul)."""
    rows = (got != want).nonzero().unbind(1)
    if not rows:
        return
    b, h, i = rows
    c = None if log_f is None else log_f.double().cumsum(-1)[b, h]

    def score(j: Tensor) -> Tensor:
        s = (q[b, h, i].double() * k[b, h, j].double()).sum(-1) / math.sqrt(q.shape[-1])
        return s if c is None else s + c.gather(1, i[:, None])[:, 0] - c.gather(1, j[:, None])[:, 0]

    assert (got[rows] <= i).all(), "argmax beyond the causal limit"
    s_got, s_want = score(got[rows]), score(want[rows])
    assert torch.allclose(s_got, s_want, rtol=rtol, atol=rtol), (s_got - s_want).abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("forget", [False, True], ids=["softmax", "fox"])
def test_compiled_kernel_on_gpu(dtype, forget):
    """The compiled kernel (auto picks it on CUDA) at a longer, ragged L against the reference."""
    q, k, v, log_f, spans = qkv(1999, 64, d_v=48, dtype=dtype, seed=10, device="cuda")
    log_f = log_f if forget else None
    args = dict(log_forget=log_f, sink_k=4, span=spans)
    got, want = attention_stats(q, k, v, **args), attention_stats(q, k, v, backend="ref", **args)
    assert got.backend == "triton"
    assert_argmax_near_ties_only(got.argmax, want.argmax, q, k, log_f)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-3)
    assert_stats_close(got._replace(argmax=want.argmax), want, **tol)


# ----------------------------------------------------------------------------- windows, soft-caps (hfload)


@pytest.mark.parametrize("window, softcap", [(5, None), (None, 2.0), (20, 3.0), (1, None), (100, None)])
@pytest.mark.parametrize("forget", [False, True], ids=["softmax", "fox"])
@pytest.mark.parametrize("backend", backends("triton", "chunked", "ref"))
def test_window_and_softcap_equal_explicit_softmax(backend, forget, window, softcap, small_blocks):
    """Sliding windows (Mistral / Qwen2 / Gemma 2: keys i − window < j ≤ i; the kernel skips key
    blocks before a query block's windows) and Gemma 2's logit soft-cap, against torch.softmax of
    explicit masked scores."""
    L = 77
    q, k, v, log_f, spans = qkv(L, 16)
    log_f = log_f if forget else None
    s = (q @ k.transpose(-1, -2)) / 4.0
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if forget:
        c = log_f.cumsum(-1)
        s = s + c[..., :, None] - c[..., None, :]
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (j <= i) if window is None else (j <= i) & (i - j < window)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1)
    got = attention_stats(q, k, v, log_f, 3, spans, backend=backend, window=window, softcap=softcap)
    torch.testing.assert_close(got.out, p @ v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.max_prob, p.amax(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.entropy, -torch.special.xlogy(p, p).sum(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.sink_mass, p[..., :3].sum(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.lse, torch.logsumexp(s, -1), rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax, s.argmax(-1))


@pytest.mark.parametrize("bad, message", [(dict(window=0), "window"), (dict(softcap=-1.0), "softcap"),
                                          (dict(softcap=float("nan")), "softcap")])
def test_window_and_softcap_errors(bad, message):
    q, k, v, _, _ = qkv(8, 16)
    with pytest.raises(ValueError, match=message):
        attention_stats(q, k, v, backend="chunked", **bad)
