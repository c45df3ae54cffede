"""Selective scan (seqlens.models.kernels.selective_scan): every backend against the reference.

One file per op. The first part tests the plain-PyTorch backends, ``ref`` (the specification, a
Python loop) and ``chunked`` (the CPU path), at float32 tolerance 1e-5 against the reference and
an independent recurrence. The second part tests ``triton``: without CUDA the kernels run through
Triton's CPU interpreter (id ``triton-interpret``; ``tests/conftest.py`` sets ``TRITON_INTERPRET=1``
before any kernel module is imported), which costs tens of microseconds per op, so shapes stay
small (L <= 100, few programs); on a GPU the same tests compile the kernels (``triton-cuda``).
Triton results are compared with :func:`selective_scan_ref` at mamba-ssm's float32 tolerances
(rtol 6e-4, atol 2e-3) -- outputs, final states, taps and all gradients.
"""

from __future__ import annotations

import ast
import inspect
from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from seqlens.models.kernels import dispatch
from seqlens.models.kernels.selective_scan import (
    ScanOutput,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from seqlens.testing import scan as scan_inputs
from seqlens.testing.backends import backends, needs_triton

if dispatch.triton_available():  # after conftest chose interpreter or compiler
    from seqlens.models.kernels import selective_scan_triton as sst
    from seqlens.models.kernels.selective_scan_triton import selective_scan_triton

CPU_ATOL = CPU_RTOL = 1e-5
cpu_inputs = partial(scan_inputs.make_inputs, with_h0=False)
cpu_close = partial(scan_inputs.assert_close, rtol=CPU_RTOL, atol=CPU_ATOL)


# =========================================================================== #
# ref and chunked
# =========================================================================== #


def explicit_states(inputs: dict[str, Any], delta_softplus: bool, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states [B, L, D, N] from an independent, vectorised-per-step recomputation."""
    u, delta, A, B = inputs["u"], inputs["delta"], inputs["A"], inputs["B"]
    if inputs["delta_bias"] is not None:
        delta = delta + inputs["delta_bias"][:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype) if h0 is None else h0
    out = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        out.append(h)
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------- #
# Correctness against the reference
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seq_len", [1, 7, 32, 33])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
def test_chunked_matches_ref_chunk_sizes(seq_len: int, chunk_size: int) -> None:
    inputs = cpu_inputs(seq_len=seq_len)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk_size)
    cpu_close(actual, expected)


@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("delta_softplus", [False, True])
def test_chunked_matches_ref_options(with_D: bool, with_z: bool, with_bias: bool, delta_softplus: bool) -> None:
    inputs = cpu_inputs(seq_len=21, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=1)
    if not delta_softplus:  # keep delta positive when it is used raw
        inputs["delta"] = inputs["delta"].abs() * 0.3
    expected = selective_scan_ref(**inputs, delta_softplus=delta_softplus, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=delta_softplus, return_final_state=True, chunk_size=8)
    cpu_close(actual.y, expected.y)
    cpu_close(actual.final_state, expected.final_state)


def test_ref_matches_explicit_recurrence() -> None:
    inputs = cpu_inputs(seq_len=9, with_z=False)
    states = explicit_states(inputs, delta_softplus=True)
    y_expected = torch.einsum("bldn,bnl->bdl", states, inputs["C"]) + inputs["D"][:, None] * inputs["u"]
    out = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    cpu_close(out.y, y_expected)
    cpu_close(out.final_state, states[:, -1])


def test_float64() -> None:
    inputs = cpu_inputs(seq_len=40, dtype=torch.float64, seed=2)
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, return_final_state=True, chunk_size=16)
    assert actual.y.dtype == torch.float64
    assert actual.final_state.dtype == torch.float64
    cpu_close(actual.y, expected.y, atol=1e-12, rtol=1e-12)
    cpu_close(actual.final_state, expected.final_state, atol=1e-12, rtol=1e-12)


def test_low_precision_input_keeps_dtype() -> None:
    inputs = cpu_inputs(seq_len=10)
    inputs["u"] = inputs["u"].bfloat16()
    inputs["z"] = inputs["z"].bfloat16()
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, return_final_state=True, chunk_size=4)
    assert actual.y.dtype == torch.bfloat16
    assert actual.final_state.dtype == torch.float32
    cpu_close(actual.y, expected.y, atol=1e-2, rtol=1e-2)


def test_non_contiguous_inputs() -> None:
    """Inputs given as transposed views of [batch, seq_len, ...] tensors, as in HF Mamba."""
    inputs = cpu_inputs(seq_len=19, seed=3)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    views = dict(inputs)
    for name in ("u", "delta", "B", "C", "z"):
        views[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        assert not views[name].is_contiguous()
    actual = selective_scan_chunked(**views, delta_softplus=True, chunk_size=8)
    cpu_close(actual, expected)


def test_empty_sequence() -> None:
    inputs = cpu_inputs(seq_len=0)
    h0 = torch.randn(2, 6, 4)
    for fn in (selective_scan_ref, selective_scan_chunked):
        out = fn(**inputs, initial_state=h0, return_final_state=True)
        assert out.y.shape == (2, 6, 0)
        cpu_close(out.final_state, h0)


def test_inference_mode() -> None:
    inputs = cpu_inputs(seq_len=12)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    with torch.inference_mode():
        actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=5)
    cpu_close(actual, expected)


# --------------------------------------------------------------------------- #
# State handling: initial/final state chaining and taps
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked], ids=["ref", "chunked"])
@pytest.mark.parametrize("split", [1, 10, 24])
def test_state_chaining(fn: Any, split: int) -> None:
    seq_len = 25
    inputs = cpu_inputs(seq_len=seq_len, seed=4)
    full = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)

    def part(lo: int, hi: int) -> dict[str, Any]:
        return {k: (v[..., lo:hi] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}

    first = fn(**part(0, split), delta_softplus=True, return_final_state=True)
    second = fn(**part(split, seq_len), delta_softplus=True, initial_state=first.final_state,
                return_final_state=True)
    cpu_close(torch.cat([first.y, second.y], dim=-1), full.y)
    cpu_close(second.final_state, full.final_state)


def test_initial_state_matches_ref_and_is_not_modified() -> None:
    inputs = cpu_inputs(seq_len=11, seed=5)
    h0 = torch.randn(2, 6, 4)
    h0_copy = h0.clone()
    expected = selective_scan_ref(**inputs, delta_softplus=True, initial_state=h0, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, return_final_state=True,
                                    chunk_size=3)
    cpu_close(actual.y, expected.y)
    cpu_close(actual.final_state, expected.final_state)
    assert torch.equal(h0, h0_copy)


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 50])
def test_taps_match_ref_and_explicit_states(chunk_size: int) -> None:
    seq_len = 30
    inputs = cpu_inputs(seq_len=seq_len, seed=6)
    h0 = torch.randn(2, 6, 4)
    positions = [0, 3, 4, 7, 8, 15, 16, 29]
    expected = selective_scan_ref(**inputs, delta_softplus=True, initial_state=h0, tap_positions=positions)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0,
                                    tap_positions=torch.tensor(positions), chunk_size=chunk_size)
    assert isinstance(actual, ScanOutput)
    assert actual.final_state is None and expected.final_state is None
    assert actual.taps.shape == (2, len(positions), 6, 4)
    cpu_close(actual.y, expected.y)
    cpu_close(actual.taps, expected.taps)
    states = explicit_states(inputs, delta_softplus=True, h0=h0)
    cpu_close(expected.taps, states[:, positions])


def test_taps_all_positions_and_final_state() -> None:
    seq_len = 17
    inputs = cpu_inputs(seq_len=seq_len, seed=7)
    out = selective_scan_chunked(**inputs, delta_softplus=True, tap_positions=list(range(seq_len)),
                                 return_final_state=True, chunk_size=5)
    cpu_close(out.taps, explicit_states(inputs, delta_softplus=True))
    cpu_close(out.taps[:, -1], out.final_state)


def test_empty_taps() -> None:
    inputs = cpu_inputs(seq_len=6)
    for fn in (selective_scan_ref, selective_scan_chunked):
        out = fn(**inputs, tap_positions=[])
        assert out.taps.shape == (2, 0, 6, 4)


def test_return_conventions() -> None:
    inputs = cpu_inputs(seq_len=5)
    for fn in (selective_scan_ref, selective_scan_chunked, selective_scan):
        y = fn(**inputs)
        assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 5)
        out = fn(**inputs, return_final_state=True)
        assert isinstance(out, ScanOutput)
        assert out.final_state.shape == (2, 6, 4) and out.taps is None
        y2, state, taps = fn(**inputs, return_final_state=True, tap_positions=[2])
        assert state.shape == (2, 6, 4) and taps.shape == (2, 1, 6, 4)
        cpu_close(y2, y)


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", backends("auto", "chunked", "ref"))
def test_dispatch_backends(backend: str) -> None:
    inputs = cpu_inputs(seq_len=9)
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[1, 8])
    actual = selective_scan(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[1, 8],
                            backend=backend, chunk_size=4)
    for a, e in zip(actual, expected):
        cpu_close(a, e)


def test_bad_backend() -> None:
    inputs = cpu_inputs(seq_len=4)
    with pytest.raises(ValueError, match=r"backend: expected 'auto' or one of \['triton', 'chunked', 'ref'\]"):
        selective_scan(**inputs, backend="cuda")


# --------------------------------------------------------------------------- #
# Validation errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("delta", (2, 6, 12)),
        ("A", (6, 4, 1)),
        ("A", (5, 4)),
        ("B", (2, 4, 12)),
        ("B", (2, 3, 13)),
        ("C", (1, 4, 13)),
        ("D", (7,)),
        ("z", (2, 6, 14)),
        ("delta_bias", (6, 1)),
        ("initial_state", (2, 6, 5)),
        ("u", (2, 6)),
    ],
)
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked], ids=["ref", "chunked"])
def test_bad_shapes(fn: Any, name: str, bad_shape: tuple[int, ...]) -> None:
    inputs = cpu_inputs(seq_len=13)
    inputs[name] = torch.randn(bad_shape)
    with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
        fn(**inputs)


def test_bad_shape_message_lists_expected_and_actual() -> None:
    inputs = cpu_inputs(batch=2, d_state=16, seq_len=10)
    inputs["B"] = torch.randn(2, 16, 9)
    with pytest.raises(ValueError) as info:
        selective_scan_chunked(**inputs)
    assert str(info.value) == "B: expected shape [batch, d_state, seq_len] = [2, 16, 10], got [2, 16, 9]"


def test_integer_input_rejected() -> None:
    inputs = cpu_inputs(seq_len=4)
    inputs["u"] = torch.ones(2, 6, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="^u:"):
        selective_scan_chunked(**inputs)


@pytest.mark.parametrize(
    "positions",
    [[-1], [10], [3, 2], [2, 2], torch.tensor([[1, 2]]), torch.tensor([1.0, 2.0]), [1.5]],
)
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked], ids=["ref", "chunked"])
def test_bad_tap_positions(fn: Any, positions: Any) -> None:
    inputs = cpu_inputs(seq_len=10)
    with pytest.raises(ValueError, match="^tap_positions"):
        fn(**inputs, tap_positions=positions)


def test_tap_positions_accept_integer_likes() -> None:
    np = pytest.importorskip("numpy")
    inputs = cpu_inputs(seq_len=10)
    expected = selective_scan_ref(**inputs, tap_positions=[1, 4, 9]).taps
    for positions in ([np.int64(1), 4, torch.tensor(9)], np.array([1, 4, 9]), (1, 4, 9),
                      torch.tensor([1, 4, 9], dtype=torch.int32)):
        cpu_close(selective_scan_chunked(**inputs, tap_positions=positions, chunk_size=3).taps, expected)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True])
def test_bad_chunk_size(chunk_size: Any) -> None:
    inputs = cpu_inputs(seq_len=4)
    with pytest.raises(ValueError, match="^chunk_size"):
        selective_scan_chunked(**inputs, chunk_size=chunk_size)


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


def test_gradients_match_ref() -> None:
    base = cpu_inputs(batch=2, d_inner=3, d_state=2, seq_len=9, dtype=torch.float64, seed=8)
    base["initial_state"] = torch.randn(2, 3, 2, dtype=torch.float64)
    positions = [2, 5]

    def run(fn: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        out = fn(**leaves, delta_softplus=True, return_final_state=True, tap_positions=positions, **kwargs)
        loss = (out.y.sin().sum() + (out.final_state ** 2).sum() + out.taps.cos().sum())
        loss.backward()
        return loss.detach(), {k: v.grad for k, v in leaves.items()}

    loss_ref, grads_ref = run(selective_scan_ref)
    loss_chk, grads_chk = run(selective_scan_chunked, chunk_size=4)
    cpu_close(loss_chk, loss_ref, atol=1e-10, rtol=1e-10)
    for name, grad in grads_ref.items():
        assert grads_chk[name] is not None, name
        cpu_close(grads_chk[name], grad, atol=1e-10, rtol=1e-10)


def _grad_run(fn: Any, base: dict[str, Any], positions: list[int] | None, **kwargs: Any
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and input gradients of a scan whose y, final state and taps all enter the loss."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in base.items() if v is not None}
    out = fn(**leaves, delta_softplus=True, return_final_state=True, tap_positions=positions, **kwargs)
    loss = out.y.sin().sum() + (out.final_state ** 2).sum()
    if positions is not None:
        loss = loss + out.taps.cos().sum()
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize(
    ("seq_len", "chunk_size"), [(1, 4), (7, 1), (7, 3), (16, 4), (23, 8), (33, 16), (40, 64)]
)
@pytest.mark.parametrize("with_taps", [False, True])
def test_gradients_match_ref_chunk_sizes(dtype: torch.dtype, tol: float, seq_len: int, chunk_size: int,
                                         with_taps: bool) -> None:
    """The training path (custom backward) against autograd through the reference."""
    base = cpu_inputs(batch=2, d_inner=5, d_state=3, seq_len=seq_len, dtype=dtype, seed=10 + seq_len)
    base["initial_state"] = torch.randn(2, 5, 3, dtype=dtype, generator=torch.Generator().manual_seed(seq_len))
    positions = sorted({0, seq_len // 2, seq_len - 1, min(chunk_size, seq_len - 1)}) if with_taps else None
    loss_ref, grads_ref = _grad_run(selective_scan_ref, base, positions)
    loss_chk, grads_chk = _grad_run(selective_scan_chunked, base, positions, chunk_size=chunk_size)
    cpu_close(loss_chk, loss_ref, atol=tol, rtol=tol)
    assert set(grads_chk) == set(grads_ref)
    for name, grad in grads_ref.items():
        assert grads_chk[name] is not None, name
        cpu_close(grads_chk[name], grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("requires", ["u", "delta", "A", "B", "C", "initial_state"])
def test_gradients_partial_requires_grad_and_unused_outputs(requires: str) -> None:
    """Only one input requires grad; y alone enters the loss (final state and taps unused)."""
    base = cpu_inputs(batch=2, d_inner=4, d_state=3, seq_len=19, dtype=torch.float64, seed=11)
    base["initial_state"] = torch.randn(2, 4, 3, dtype=torch.float64)

    def grad(fn: Any, **kwargs: Any) -> torch.Tensor:
        inputs = dict(base)
        inputs[requires] = base[requires].clone().requires_grad_(True)
        out = fn(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[3, 9], **kwargs)
        (out.y * torch.linspace(-1, 1, 19, dtype=torch.float64)).sum().backward()
        return inputs[requires].grad

    cpu_close(grad(selective_scan_chunked, chunk_size=5), grad(selective_scan_ref), atol=1e-10, rtol=1e-10)


def test_training_path_non_contiguous_and_gate() -> None:
    """Grad path with transposed-view inputs (as Mamba passes them) matches the reference."""
    base = cpu_inputs(batch=3, d_inner=8, d_state=4, seq_len=37, seed=12)
    leaves_ref = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    leaves_chk = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "B", "C", "z") else v)
             for k, v in leaves_chk.items()}
    selective_scan_ref(**leaves_ref, delta_softplus=True).square().sum().backward()
    y = selective_scan_chunked(**views, delta_softplus=True, chunk_size=16)
    assert y.requires_grad
    y.square().sum().backward()
    for name, leaf in leaves_ref.items():
        cpu_close(leaves_chk[name].grad, leaf.grad, atol=1e-4, rtol=1e-5)


def test_gradcheck_chunked_state_and_taps() -> None:
    inputs = cpu_inputs(batch=1, d_inner=2, d_state=2, seq_len=7, dtype=torch.float64, seed=13)
    h0 = torch.randn(1, 2, 2, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C"]
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names) + (h0.requires_grad_(True),)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = selective_scan_chunked(*args[:5], D=inputs["D"], delta_softplus=True, initial_state=args[5],
                                     return_final_state=True, tap_positions=[1, 4], chunk_size=3)
        return out.y, out.final_state, out.taps

    assert torch.autograd.gradcheck(fn, leaves)


def test_gradcheck_chunked() -> None:
    inputs = cpu_inputs(batch=1, d_inner=2, d_state=2, seq_len=5, dtype=torch.float64, seed=9)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan_chunked(*args[:5], D=args[5], z=args[6], delta_bias=args[7],
                                      delta_softplus=True, chunk_size=2)

    assert torch.autograd.gradcheck(fn, leaves)


def test_no_grad_with_requires_grad_inputs() -> None:
    """Under no_grad the fast in-place path runs even if inputs require grad."""
    inputs = cpu_inputs(seq_len=10)
    inputs = {k: v.requires_grad_(True) if v is not None else v for k, v in inputs.items()}
    with torch.no_grad():
        expected = selective_scan_ref(**inputs, delta_softplus=True)
        actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=3)
    assert not actual.requires_grad
    cpu_close(actual, expected)


# --------------------------------------------------------------------------- #
# Memory: no [batch, d_inner, seq_len, d_state] tensor is ever created
# --------------------------------------------------------------------------- #


class OutputSizeRecorder(TorchDispatchMode):
    """Records the shape of every tensor returned by every ATen op run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                self.records.append((str(func), tuple(t.shape)))
        return out

    def largest(self) -> tuple[str, tuple[int, ...]]:
        """The op and shape of the largest recorded output."""
        return max(self.records, key=lambda r: torch.Size(r[1]).numel())


def _numel(shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel()


def test_recorder_catches_full_materialisation() -> None:
    """Sanity check of the checker: a naive scan does create a [B, D, L, N] tensor."""
    inputs = cpu_inputs(batch=2, d_inner=8, d_state=4, seq_len=256)
    full = 2 * 8 * 256 * 4
    with OutputSizeRecorder() as rec:
        torch.exp(inputs["A"][None, :, None, :] * inputs["delta"][:, :, :, None])
    assert _numel(rec.largest()[1]) >= full


@pytest.mark.parametrize("with_grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("with_taps", [False, True])
def test_chunked_never_allocates_full_state_sequence(with_taps: bool, with_grad: bool) -> None:
    batch, d_inner, d_state, seq_len, chunk = 2, 8, 4, 256, 32
    inputs = cpu_inputs(batch=batch, d_inner=d_inner, d_state=d_state, seq_len=seq_len)
    h0 = torch.zeros(batch, d_inner, d_state)
    if with_grad:
        inputs = {k: v.requires_grad_(True) for k, v in inputs.items()}
        h0.requires_grad_(True)
    taps = [5, 100, 255] if with_taps else None
    with OutputSizeRecorder() as rec:
        out = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0,
                                     return_final_state=True, tap_positions=taps, chunk_size=chunk)
        if with_grad:
            assert out.y.requires_grad
            n_forward = len(rec.records)
            loss = out.y.sum() + out.final_state.sum() + (out.taps.sum() if with_taps else 0)
            loss.backward()
            assert len(rec.records) > n_forward, "the recorder saw no backward ops"
    assert rec.records, "the recorder saw no ops"
    if with_grad:
        assert all(v.grad is not None for v in inputs.values()) and h0.grad is not None
    # Largest legitimate tensors: the two chunk buffers and the [B, D, L]-sized inputs/outputs.
    budget = max(batch * d_inner * d_state * chunk, batch * d_inner * seq_len)
    op, shape = rec.largest()
    assert _numel(shape) <= budget, f"{op} produced {shape}"
    assert _numel(shape) < batch * d_inner * seq_len * d_state
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True, tap_positions=taps)
    cpu_close(out.y, expected.y)


# =========================================================================== #
# triton ("triton-interpret" on CPU, "triton-cuda" on a GPU)
# =========================================================================== #

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL, ATOL = 6e-4, 2e-3  # mamba-ssm's float32 tolerances


make_inputs = partial(scan_inputs.make_inputs, device=DEVICE)
assert_close = partial(scan_inputs.assert_close, rtol=RTOL, atol=ATOL)


def run_with_grads(fn: Any, base: dict[str, Any], softplus: bool, positions: list[int] | None
                   ) -> tuple[ScanOutput, dict[str, torch.Tensor]]:
    """Scan with every input requiring grad; y, the final state and the taps all enter the loss."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in base.items() if v is not None}
    out = fn(**leaves, delta_softplus=softplus, return_final_state=True, tap_positions=positions)
    loss = out.y.float().sin().sum() + (out.final_state ** 2).sum()
    if positions is not None:
        loss = loss + out.taps.cos().sum()
    loss.backward()
    return out, {k: v.grad for k, v in leaves.items()}


def compare_with_ref(base: dict[str, Any], softplus: bool, positions: list[int] | None,
                     rtol: float = RTOL, atol: float = ATOL) -> None:
    """Outputs, final state, taps and every gradient of the Triton scan against the reference."""
    out, grads = run_with_grads(selective_scan_triton, base, softplus, positions)
    ref, ref_grads = run_with_grads(selective_scan_ref, base, softplus, positions)
    assert_close(out.y, ref.y, rtol=rtol, atol=atol, name="y")
    assert_close(out.final_state, ref.final_state, rtol=rtol, atol=atol, name="final_state")
    if positions is None:
        assert out.taps is None
    else:
        assert_close(out.taps, ref.taps, rtol=rtol, atol=atol, name="taps")
    assert set(grads) == set(ref_grads)
    for name, expected in ref_grads.items():
        assert grads[name] is not None, name
        assert_close(grads[name], expected, rtol=rtol, atol=atol, name=f"grad {name}")


# --------------------------------------------------------------------------- #
# Forward and backward against the reference
# --------------------------------------------------------------------------- #


@needs_triton
@pytest.mark.parametrize(
    ("shape", "options", "positions"),
    [
        pytest.param(dict(seq_len=1), {}, [0], id="L1-all-options"),
        pytest.param(dict(seq_len=37, d_state=16), {}, [0, 17, 36], id="L37-N16-taps-first-mid-last"),
        pytest.param(dict(seq_len=37, d_inner=5, d_state=5),
                     dict(with_D=False, with_z=False, with_bias=False, with_h0=False, softplus=False),
                     None, id="L37-N5-no-options"),
        pytest.param(dict(seq_len=100, d_state=4), dict(with_z=False, with_h0=False), [3, 63, 64, 99],
                     id="L100-two-chunks-taps-at-chunk-edge"),
        pytest.param(dict(batch=3, seq_len=17, d_inner=3, d_state=16), dict(with_D=False, with_bias=False),
                     [16], id="L17-batch3-gate-only"),
    ],
)
def test_matches_ref_with_gradients(shape: dict[str, int], options: dict[str, bool],
                                    positions: list[int] | None) -> None:
    base = make_inputs(**shape, **options, seed=shape["seq_len"])
    compare_with_ref(base, options.get("softplus", True), positions)


@needs_triton
def test_many_blocks_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """d_inner 20 in blocks of 8 (the last one partial), 37 steps in chunks of 16, 16 and 5."""
    monkeypatch.setattr(sst, "BLOCK_D", 8)
    monkeypatch.setattr(sst, "CHECKPOINT_EVERY", 16)
    base = make_inputs(batch=1, seq_len=37, d_inner=20, d_state=4, with_z=False, seed=1)
    compare_with_ref(base, True, [0, 15, 16, 31, 32, 36])


@needs_triton
def test_float64_matches_ref_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 inputs run the kernels in float64: equal to the reference to 1e-10."""
    monkeypatch.setattr(sst, "BLOCK_D", 4)
    monkeypatch.setattr(sst, "CHECKPOINT_EVERY", 8)
    base = make_inputs(seq_len=17, d_inner=6, d_state=3, dtype=torch.float64, seed=2)
    out = selective_scan_triton(**base, delta_softplus=True, return_final_state=True)
    assert out.y.dtype == torch.float64 and out.final_state.dtype == torch.float64
    compare_with_ref(base, True, [4, 8, 16], rtol=1e-10, atol=1e-10)


@needs_triton
@pytest.mark.parametrize("with_D", [False, True], ids=["noD", "D"])
@pytest.mark.parametrize("with_z", [False, True], ids=["noz", "z"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("softplus", [False, True], ids=["raw", "softplus"])
def test_forward_options(with_D: bool, with_z: bool, with_bias: bool, softplus: bool) -> None:
    base = make_inputs(seq_len=11, with_D=with_D, with_z=with_z, with_bias=with_bias, softplus=softplus,
                       seed=3)
    out = selective_scan_triton(**base, delta_softplus=softplus, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=softplus, return_final_state=True)
    assert_close(out.y, ref.y, name="y")
    assert_close(out.final_state, ref.final_state, name="final_state")


@needs_triton
def test_taps_at_every_position_and_as_tensor() -> None:
    base = make_inputs(seq_len=13, seed=4)
    positions = torch.arange(13)
    out = selective_scan_triton(**base, delta_softplus=True, tap_positions=positions, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=True, tap_positions=positions)
    assert_close(out.taps, ref.taps, name="taps")
    assert torch.equal(out.taps[:, -1], out.final_state)


@needs_triton
@pytest.mark.parametrize("requires", ["A", "initial_state"])
def test_partial_requires_grad_and_unused_outputs(requires: str) -> None:
    """One input requires grad and only y enters the loss (zero grads for state and taps)."""
    base = make_inputs(seq_len=12, seed=5)

    def grad(fn: Any) -> torch.Tensor:
        inputs = dict(base)
        inputs[requires] = base[requires].clone().requires_grad_(True)
        out = fn(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[3, 9])
        (out.y * torch.linspace(-1, 1, 12, device=DEVICE)).sum().backward()
        return inputs[requires].grad

    assert_close(grad(selective_scan_triton), grad(selective_scan_ref), name=requires)


# --------------------------------------------------------------------------- #
# Layouts, dtypes, states
# --------------------------------------------------------------------------- #


@needs_triton
def test_non_contiguous_inputs_are_used_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transposed views of [batch, seq_len, ...] tensors (as Mamba makes them) reach the kernel
    as they are -- no copies -- and give the reference's outputs and gradients."""
    base = make_inputs(seq_len=21, seed=6)
    views = dict(base)
    for name in ("u", "delta", "B", "C", "z"):
        views[name] = base[name].transpose(1, 2).contiguous().transpose(1, 2)
        assert not views[name].is_contiguous()
    launched: list[tuple[Any, ...]] = []
    kernel = sst._scan_fwd_kernel

    class Spy:
        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> Any:
                launched.append(args)
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(sst, "_scan_fwd_kernel", Spy())
    selective_scan_triton(**views, delta_softplus=True)
    assert all(a is views[n] for a, n in zip(launched[0], ("u", "delta", "A", "B", "C", "D", "z")))
    compare_with_ref(views, True, [5])


@needs_triton
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)],
                         ids=["float16", "bfloat16"])
def test_half_precision_inputs(dtype: torch.dtype, tol: float) -> None:
    """Half inputs are computed in float32: y in the input dtype, states in float32."""
    base = make_inputs(seq_len=12, dtype=dtype, seed=7)
    out, grads = run_with_grads(selective_scan_triton, base, True, [4])
    ref, ref_grads = run_with_grads(selective_scan_ref, base, True, [4])
    assert out.y.dtype == dtype and out.final_state.dtype == torch.float32
    assert_close(out.y, ref.y, rtol=tol, atol=tol, name="y")
    assert_close(out.final_state, ref.final_state, name="final_state")
    assert_close(out.taps, ref.taps, name="taps")
    for name, expected in ref_grads.items():
        assert_close(grads[name], expected, rtol=tol, atol=tol, name=f"grad {name}")


@needs_triton
def test_state_chaining_and_initial_state_untouched() -> None:
    base = make_inputs(seq_len=25, seed=8)
    h0 = base["initial_state"].clone()
    full = selective_scan_ref(**base, delta_softplus=True, return_final_state=True)
    first = selective_scan_triton(**{k: v[..., :10] if k in ("u", "delta", "B", "C", "z") else v
                                     for k, v in base.items()}, delta_softplus=True, return_final_state=True)
    rest = {k: v[..., 10:] if k in ("u", "delta", "B", "C", "z") else v for k, v in base.items()}
    rest["initial_state"] = first.final_state
    second = selective_scan_triton(**rest, delta_softplus=True, return_final_state=True)
    assert_close(torch.cat([first.y, second.y], dim=-1), full.y, name="y")
    assert_close(second.final_state, full.final_state, name="final_state")
    assert torch.equal(base["initial_state"], h0)


@needs_triton
def test_triton_empty_sequence() -> None:
    base = make_inputs(seq_len=0)
    out = selective_scan_triton(**base, return_final_state=True, tap_positions=[])
    assert out.y.shape == (2, 6, 0) and out.taps.shape == (2, 0, 6, 4)
    assert torch.equal(out.final_state, base["initial_state"])
    assert out.final_state.data_ptr() != base["initial_state"].data_ptr()


@needs_triton
@pytest.mark.parametrize("shape", [dict(batch=0), dict(d_state=0)], ids=["batch0", "d_state0"])
def test_degenerate_shapes(shape: dict[str, int]) -> None:
    base = make_inputs(seq_len=5, **shape)
    out = selective_scan_triton(**base, delta_softplus=True, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=True, return_final_state=True)
    assert_close(out.y, ref.y, name="y")
    assert_close(out.final_state, ref.final_state, name="final_state")


@needs_triton
def test_triton_no_grad_with_requires_grad_inputs() -> None:
    base = make_inputs(seq_len=9, seed=9)
    leaves = {k: v.requires_grad_(True) for k, v in base.items() if v is not None}
    with torch.no_grad():
        y = selective_scan_triton(**leaves, delta_softplus=True)
    assert not y.requires_grad
    assert_close(y, selective_scan_ref(**base, delta_softplus=True).detach(), name="y")


# --------------------------------------------------------------------------- #
# Dispatch and errors
# --------------------------------------------------------------------------- #


@needs_triton
def test_dispatch_triton_and_return_conventions() -> None:
    base = make_inputs(seq_len=5, with_h0=False)
    y = selective_scan(**base, backend="triton")
    assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 5)
    out = selective_scan(**base, backend="triton", return_final_state=True)
    assert isinstance(out, ScanOutput) and out.final_state.shape == (2, 6, 4) and out.taps is None
    y2, state, taps = selective_scan(**base, backend="triton", tap_positions=[2])
    assert state is None and taps.shape == (2, 1, 6, 4)
    assert_close(y2, y, name="y")


@needs_triton
def test_auto_picks_chunked_on_cpu() -> None:
    assert dispatch.resolve_backend("selective_scan", "auto", torch.zeros(1)) == "chunked"


@needs_triton
def test_triton_on_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    base = make_inputs(seq_len=4, device="cpu")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        selective_scan(**base, backend="triton")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        selective_scan_triton(**base)


@needs_triton
def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="^backend: expected 'auto' or one of"):
        selective_scan(**make_inputs(seq_len=4), backend="cuda")


@needs_triton
def test_input_errors_name_the_argument() -> None:
    base = make_inputs(seq_len=6)
    with pytest.raises(ValueError, match=r"^B: expected shape \[batch, d_state, seq_len\]"):
        selective_scan_triton(**{**base, "B": base["B"][..., :5]})
    with pytest.raises(ValueError, match="^tap_positions"):
        selective_scan_triton(**base, tap_positions=[3, 3])
    with pytest.raises(ValueError, match="^A: expected a tensor on"):
        selective_scan_triton(**{**base, "A": base["A"].to("meta")})
    with pytest.raises(TypeError, match="^u:"):
        selective_scan_triton(**{**base, "u": base["u"].long()})


@needs_triton
def test_kernel_module_is_imported_lazily() -> None:
    """triton.jit fixes interpreter-vs-compiler when a kernel is defined, so neither the package
    nor the dispatcher's module may import Triton or the kernel module at import time."""
    import seqlens.models.kernels as package
    from seqlens.models.kernels import selective_scan as dispatcher_module

    for module in (package, dispatcher_module):
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] == "triton" or "selective_scan_triton" in n]
            assert not bad, f"{module.__name__}: {ast.unparse(node)}"


# --------------------------------------------------------------------------- #
# GPU (compiled kernels)
# --------------------------------------------------------------------------- #


@needs_triton
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_large_shape_matches_ref() -> None:
    """Compiled kernels on a Mamba-sized block: many channel blocks and checkpoint chunks."""
    assert dispatch.resolve_backend("selective_scan", "auto", torch.zeros(1, device="cuda")) == "triton"
    base = make_inputs(batch=2, d_inner=200, d_state=16, seq_len=333, seed=10, device="cuda")
    compare_with_ref(base, True, [0, 63, 64, 200, 332])


@needs_triton
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bfloat16_inputs() -> None:
    base = make_inputs(batch=2, d_inner=96, d_state=16, seq_len=257, dtype=torch.bfloat16, seed=11,
                       device="cuda")
    out = selective_scan(**base, delta_softplus=True, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=True, return_final_state=True)
    assert out.y.dtype == torch.bfloat16 and out.final_state.dtype == torch.float32
    assert_close(out.y, ref.y, rtol=1e-2, atol=1e-2, name="y")
    assert_close(out.final_state, ref.final_state, name="final_state")
