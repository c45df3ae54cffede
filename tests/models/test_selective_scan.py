"""Tests for the CPU selective scan (seqlens.models.kernels.selective_scan)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from seqlens.testing import scan as scan_inputs
from seqlens.models.kernels.selective_scan import (
    ScanOutput,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

ATOL = 1e-5
RTOL = 1e-5


make_inputs = partial(scan_inputs.make_inputs, with_h0=False)
assert_close = partial(scan_inputs.assert_close, rtol=RTOL, atol=ATOL)


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
    inputs = make_inputs(seq_len=seq_len)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk_size)
    assert_close(actual, expected)


@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("delta_softplus", [False, True])
def test_chunked_matches_ref_options(with_D: bool, with_z: bool, with_bias: bool, delta_softplus: bool) -> None:
    inputs = make_inputs(seq_len=21, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=1)
    if not delta_softplus:  # keep delta positive when it is used raw
        inputs["delta"] = inputs["delta"].abs() * 0.3
    expected = selective_scan_ref(**inputs, delta_softplus=delta_softplus, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=delta_softplus, return_final_state=True, chunk_size=8)
    assert_close(actual.y, expected.y)
    assert_close(actual.final_state, expected.final_state)


def test_ref_matches_explicit_recurrence() -> None:
    inputs = make_inputs(seq_len=9, with_z=False)
    states = explicit_states(inputs, delta_softplus=True)
    y_expected = torch.einsum("bldn,bnl->bdl", states, inputs["C"]) + inputs["D"][:, None] * inputs["u"]
    out = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    assert_close(out.y, y_expected)
    assert_close(out.final_state, states[:, -1])


def test_float64() -> None:
    inputs = make_inputs(seq_len=40, dtype=torch.float64, seed=2)
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, return_final_state=True, chunk_size=16)
    assert actual.y.dtype == torch.float64
    assert actual.final_state.dtype == torch.float64
    assert_close(actual.y, expected.y, atol=1e-12, rtol=1e-12)
    assert_close(actual.final_state, expected.final_state, atol=1e-12, rtol=1e-12)


def test_low_precision_input_keeps_dtype() -> None:
    inputs = make_inputs(seq_len=10)
    inputs["u"] = inputs["u"].bfloat16()
    inputs["z"] = inputs["z"].bfloat16()
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, return_final_state=True, chunk_size=4)
    assert actual.y.dtype == torch.bfloat16
    assert actual.final_state.dtype == torch.float32
    assert_close(actual.y, expected.y, atol=1e-2, rtol=1e-2)


def test_non_contiguous_inputs() -> None:
    """Inputs given as transposed views of [batch, seq_len, ...] tensors, as in HF Mamba."""
    inputs = make_inputs(seq_len=19, seed=3)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    views = dict(inputs)
    for name in ("u", "delta", "B", "C", "z"):
        views[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        assert not views[name].is_contiguous()
    actual = selective_scan_chunked(**views, delta_softplus=True, chunk_size=8)
    assert_close(actual, expected)


def test_empty_sequence() -> None:
    inputs = make_inputs(seq_len=0)
    h0 = torch.randn(2, 6, 4)
    for fn in (selective_scan_ref, selective_scan_chunked):
        out = fn(**inputs, initial_state=h0, return_final_state=True)
        assert out.y.shape == (2, 6, 0)
        assert_close(out.final_state, h0)


def test_inference_mode() -> None:
    inputs = make_inputs(seq_len=12)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    with torch.inference_mode():
        actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=5)
    assert_close(actual, expected)


# --------------------------------------------------------------------------- #
# State handling: initial/final state chaining and taps
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
@pytest.mark.parametrize("split", [1, 10, 24])
def test_state_chaining(fn: Any, split: int) -> None:
    seq_len = 25
    inputs = make_inputs(seq_len=seq_len, seed=4)
    full = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True)

    def part(lo: int, hi: int) -> dict[str, Any]:
        return {k: (v[..., lo:hi] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}

    first = fn(**part(0, split), delta_softplus=True, return_final_state=True)
    second = fn(**part(split, seq_len), delta_softplus=True, initial_state=first.final_state,
                return_final_state=True)
    assert_close(torch.cat([first.y, second.y], dim=-1), full.y)
    assert_close(second.final_state, full.final_state)


def test_initial_state_matches_ref_and_is_not_modified() -> None:
    inputs = make_inputs(seq_len=11, seed=5)
    h0 = torch.randn(2, 6, 4)
    h0_copy = h0.clone()
    expected = selective_scan_ref(**inputs, delta_softplus=True, initial_state=h0, return_final_state=True)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, return_final_state=True,
                                    chunk_size=3)
    assert_close(actual.y, expected.y)
    assert_close(actual.final_state, expected.final_state)
    assert torch.equal(h0, h0_copy)


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 50])
def test_taps_match_ref_and_explicit_states(chunk_size: int) -> None:
    seq_len = 30
    inputs = make_inputs(seq_len=seq_len, seed=6)
    h0 = torch.randn(2, 6, 4)
    positions = [0, 3, 4, 7, 8, 15, 16, 29]
    expected = selective_scan_ref(**inputs, delta_softplus=True, initial_state=h0, tap_positions=positions)
    actual = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0,
                                    tap_positions=torch.tensor(positions), chunk_size=chunk_size)
    assert isinstance(actual, ScanOutput)
    assert actual.final_state is None and expected.final_state is None
    assert actual.taps.shape == (2, len(positions), 6, 4)
    assert_close(actual.y, expected.y)
    assert_close(actual.taps, expected.taps)
    states = explicit_states(inputs, delta_softplus=True, h0=h0)
    assert_close(expected.taps, states[:, positions])


def test_taps_all_positions_and_final_state() -> None:
    seq_len = 17
    inputs = make_inputs(seq_len=seq_len, seed=7)
    out = selective_scan_chunked(**inputs, delta_softplus=True, tap_positions=list(range(seq_len)),
                                 return_final_state=True, chunk_size=5)
    assert_close(out.taps, explicit_states(inputs, delta_softplus=True))
    assert_close(out.taps[:, -1], out.final_state)


def test_empty_taps() -> None:
    inputs = make_inputs(seq_len=6)
    for fn in (selective_scan_ref, selective_scan_chunked):
        out = fn(**inputs, tap_positions=[])
        assert out.taps.shape == (2, 0, 6, 4)


def test_return_conventions() -> None:
    inputs = make_inputs(seq_len=5)
    for fn in (selective_scan_ref, selective_scan_chunked, selective_scan):
        y = fn(**inputs)
        assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 5)
        out = fn(**inputs, return_final_state=True)
        assert isinstance(out, ScanOutput)
        assert out.final_state.shape == (2, 6, 4) and out.taps is None
        y2, state, taps = fn(**inputs, return_final_state=True, tap_positions=[2])
        assert state.shape == (2, 6, 4) and taps.shape == (2, 1, 6, 4)
        assert_close(y2, y)


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", ["auto", "chunked", "ref"])
def test_dispatch_backends(backend: str) -> None:
    inputs = make_inputs(seq_len=9)
    expected = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[1, 8])
    actual = selective_scan(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[1, 8],
                            backend=backend, chunk_size=4)
    for a, e in zip(actual, expected):
        assert_close(a, e)


def test_bad_backend() -> None:
    inputs = make_inputs(seq_len=4)
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
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_bad_shapes(fn: Any, name: str, bad_shape: tuple[int, ...]) -> None:
    inputs = make_inputs(seq_len=13)
    inputs[name] = torch.randn(bad_shape)
    with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
        fn(**inputs)


def test_bad_shape_message_lists_expected_and_actual() -> None:
    inputs = make_inputs(batch=2, d_state=16, seq_len=10)
    inputs["B"] = torch.randn(2, 16, 9)
    with pytest.raises(ValueError) as info:
        selective_scan_chunked(**inputs)
    assert str(info.value) == "B: expected shape [batch, d_state, seq_len] = [2, 16, 10], got [2, 16, 9]"


def test_integer_input_rejected() -> None:
    inputs = make_inputs(seq_len=4)
    inputs["u"] = torch.ones(2, 6, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="^u:"):
        selective_scan_chunked(**inputs)


@pytest.mark.parametrize(
    "positions",
    [[-1], [10], [3, 2], [2, 2], torch.tensor([[1, 2]]), torch.tensor([1.0, 2.0]), [1.5]],
)
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_bad_tap_positions(fn: Any, positions: Any) -> None:
    inputs = make_inputs(seq_len=10)
    with pytest.raises(ValueError, match="^tap_positions"):
        fn(**inputs, tap_positions=positions)


def test_tap_positions_accept_integer_likes() -> None:
    np = pytest.importorskip("numpy")
    inputs = make_inputs(seq_len=10)
    expected = selective_scan_ref(**inputs, tap_positions=[1, 4, 9]).taps
    for positions in ([np.int64(1), 4, torch.tensor(9)], np.array([1, 4, 9]), (1, 4, 9),
                      torch.tensor([1, 4, 9], dtype=torch.int32)):
        assert_close(selective_scan_chunked(**inputs, tap_positions=positions, chunk_size=3).taps, expected)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True])
def test_bad_chunk_size(chunk_size: Any) -> None:
    inputs = make_inputs(seq_len=4)
    with pytest.raises(ValueError, match="^chunk_size"):
        selective_scan_chunked(**inputs, chunk_size=chunk_size)


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


def test_gradients_match_ref() -> None:
    base = make_inputs(batch=2, d_inner=3, d_state=2, seq_len=9, dtype=torch.float64, seed=8)
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
    assert_close(loss_chk, loss_ref, atol=1e-10, rtol=1e-10)
    for name, grad in grads_ref.items():
        assert grads_chk[name] is not None, name
        assert_close(grads_chk[name], grad, atol=1e-10, rtol=1e-10)


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
    base = make_inputs(batch=2, d_inner=5, d_state=3, seq_len=seq_len, dtype=dtype, seed=10 + seq_len)
    base["initial_state"] = torch.randn(2, 5, 3, dtype=dtype, generator=torch.Generator().manual_seed(seq_len))
    positions = sorted({0, seq_len // 2, seq_len - 1, min(chunk_size, seq_len - 1)}) if with_taps else None
    loss_ref, grads_ref = _grad_run(selective_scan_ref, base, positions)
    loss_chk, grads_chk = _grad_run(selective_scan_chunked, base, positions, chunk_size=chunk_size)
    assert_close(loss_chk, loss_ref, atol=tol, rtol=tol)
    assert set(grads_chk) == set(grads_ref)
    for name, grad in grads_ref.items():
        assert grads_chk[name] is not None, name
        assert_close(grads_chk[name], grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("requires", ["u", "delta", "A", "B", "C", "initial_state"])
def test_gradients_partial_requires_grad_and_unused_outputs(requires: str) -> None:
    """Only one input requires grad; y alone enters the loss (final state and taps unused)."""
    base = make_inputs(batch=2, d_inner=4, d_state=3, seq_len=19, dtype=torch.float64, seed=11)
    base["initial_state"] = torch.randn(2, 4, 3, dtype=torch.float64)

    def grad(fn: Any, **kwargs: Any) -> torch.Tensor:
        inputs = dict(base)
        inputs[requires] = base[requires].clone().requires_grad_(True)
        out = fn(**inputs, delta_softplus=True, return_final_state=True, tap_positions=[3, 9], **kwargs)
        (out.y * torch.linspace(-1, 1, 19, dtype=torch.float64)).sum().backward()
        return inputs[requires].grad

    assert_close(grad(selective_scan_chunked, chunk_size=5), grad(selective_scan_ref), atol=1e-10, rtol=1e-10)


def test_training_path_non_contiguous_and_gate() -> None:
    """Grad path with transposed-view inputs (as Mamba passes them) matches the reference."""
    base = make_inputs(batch=3, d_inner=8, d_state=4, seq_len=37, seed=12)
    leaves_ref = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    leaves_chk = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "B", "C", "z") else v)
             for k, v in leaves_chk.items()}
    selective_scan_ref(**leaves_ref, delta_softplus=True).square().sum().backward()
    y = selective_scan_chunked(**views, delta_softplus=True, chunk_size=16)
    assert y.requires_grad
    y.square().sum().backward()
    for name, leaf in leaves_ref.items():
        assert_close(leaves_chk[name].grad, leaf.grad, atol=1e-4, rtol=1e-5)


def test_gradcheck_chunked_state_and_taps() -> None:
    inputs = make_inputs(batch=1, d_inner=2, d_state=2, seq_len=7, dtype=torch.float64, seed=13)
    h0 = torch.randn(1, 2, 2, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C"]
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names) + (h0.requires_grad_(True),)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = selective_scan_chunked(*args[:5], D=inputs["D"], delta_softplus=True, initial_state=args[5],
                                     return_final_state=True, tap_positions=[1, 4], chunk_size=3)
        return out.y, out.final_state, out.taps

    assert torch.autograd.gradcheck(fn, leaves)


def test_gradcheck_chunked() -> None:
    inputs = make_inputs(batch=1, d_inner=2, d_state=2, seq_len=5, dtype=torch.float64, seed=9)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan_chunked(*args[:5], D=args[5], z=args[6], delta_bias=args[7],
                                      delta_softplus=True, chunk_size=2)

    assert torch.autograd.gradcheck(fn, leaves)


def test_no_grad_with_requires_grad_inputs() -> None:
    """Under no_grad the fast in-place path runs even if inputs require grad."""
    inputs = make_inputs(seq_len=10)
    inputs = {k: v.requires_grad_(True) if v is not None else v for k, v in inputs.items()}
    with torch.no_grad():
        expected = selective_scan_ref(**inputs, delta_softplus=True)
        actual = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=3)
    assert not actual.requires_grad
    assert_close(actual, expected)


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
    inputs = make_inputs(batch=2, d_inner=8, d_state=4, seq_len=256)
    full = 2 * 8 * 256 * 4
    with OutputSizeRecorder() as rec:
        torch.exp(inputs["A"][None, :, None, :] * inputs["delta"][:, :, :, None])
    assert _numel(rec.largest()[1]) >= full


@pytest.mark.parametrize("with_grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("with_taps", [False, True])
def test_chunked_never_allocates_full_state_sequence(with_taps: bool, with_grad: bool) -> None:
    batch, d_inner, d_state, seq_len, chunk = 2, 8, 4, 256, 32
    inputs = make_inputs(batch=batch, d_inner=d_inner, d_state=d_state, seq_len=seq_len)
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
    assert_close(out.y, expected.y)
