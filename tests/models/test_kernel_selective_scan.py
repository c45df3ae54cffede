"""Tests for the Triton selective scan (seqlens.models.kernels.selective_scan_triton).

Without CUDA the kernels run through Triton's CPU interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before this module imports them), which costs tens of microseconds per
op: shapes stay small (L <= 100, few programs). On a GPU machine the same tests compile the
kernels and run on CUDA. Every result is compared with :func:`selective_scan_ref` at mamba-ssm's
float32 tolerances (rtol 6e-4, atol 2e-3) -- outputs, final states, taps and all gradients.
"""

from __future__ import annotations

import ast
import inspect
from functools import partial
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from seqlens.testing import scan as scan_inputs  # noqa: E402
from seqlens.models.kernels import dispatch  # noqa: E402
from seqlens.models.kernels import selective_scan_triton as sst  # noqa: E402
from seqlens.models.kernels.selective_scan import (  # noqa: E402
    ScanOutput,
    selective_scan,
    selective_scan_ref,
)
from seqlens.models.kernels.selective_scan_triton import selective_scan_triton  # noqa: E402

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


def test_many_blocks_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """d_inner 20 in blocks of 8 (the last one partial), 37 steps in chunks of 16, 16 and 5."""
    monkeypatch.setattr(sst, "BLOCK_D", 8)
    monkeypatch.setattr(sst, "CHECKPOINT_EVERY", 16)
    base = make_inputs(batch=1, seq_len=37, d_inner=20, d_state=4, with_z=False, seed=1)
    compare_with_ref(base, True, [0, 15, 16, 31, 32, 36])


def test_float64_matches_ref_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 inputs run the kernels in float64: equal to the reference to 1e-10."""
    monkeypatch.setattr(sst, "BLOCK_D", 4)
    monkeypatch.setattr(sst, "CHECKPOINT_EVERY", 8)
    base = make_inputs(seq_len=17, d_inner=6, d_state=3, dtype=torch.float64, seed=2)
    out = selective_scan_triton(**base, delta_softplus=True, return_final_state=True)
    assert out.y.dtype == torch.float64 and out.final_state.dtype == torch.float64
    compare_with_ref(base, True, [4, 8, 16], rtol=1e-10, atol=1e-10)


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


def test_taps_at_every_position_and_as_tensor() -> None:
    base = make_inputs(seq_len=13, seed=4)
    positions = torch.arange(13)
    out = selective_scan_triton(**base, delta_softplus=True, tap_positions=positions, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=True, tap_positions=positions)
    assert_close(out.taps, ref.taps, name="taps")
    assert torch.equal(out.taps[:, -1], out.final_state)


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


def test_empty_sequence() -> None:
    base = make_inputs(seq_len=0)
    out = selective_scan_triton(**base, return_final_state=True, tap_positions=[])
    assert out.y.shape == (2, 6, 0) and out.taps.shape == (2, 0, 6, 4)
    assert torch.equal(out.final_state, base["initial_state"])
    assert out.final_state.data_ptr() != base["initial_state"].data_ptr()


@pytest.mark.parametrize("shape", [dict(batch=0), dict(d_state=0)], ids=["batch0", "d_state0"])
def test_degenerate_shapes(shape: dict[str, int]) -> None:
    base = make_inputs(seq_len=5, **shape)
    out = selective_scan_triton(**base, delta_softplus=True, return_final_state=True)
    ref = selective_scan_ref(**base, delta_softplus=True, return_final_state=True)
    assert_close(out.y, ref.y, name="y")
    assert_close(out.final_state, ref.final_state, name="final_state")


def test_no_grad_with_requires_grad_inputs() -> None:
    base = make_inputs(seq_len=9, seed=9)
    leaves = {k: v.requires_grad_(True) for k, v in base.items() if v is not None}
    with torch.no_grad():
        y = selective_scan_triton(**leaves, delta_softplus=True)
    assert not y.requires_grad
    assert_close(y, selective_scan_ref(**base, delta_softplus=True).detach(), name="y")


# --------------------------------------------------------------------------- #
# Dispatch and errors
# --------------------------------------------------------------------------- #


def test_dispatch_triton_and_return_conventions() -> None:
    base = make_inputs(seq_len=5, with_h0=False)
    y = selective_scan(**base, backend="triton")
    assert isinstance(y, torch.Tensor) and y.shape == (2, 6, 5)
    out = selective_scan(**base, backend="triton", return_final_state=True)
    assert isinstance(out, ScanOutput) and out.final_state.shape == (2, 6, 4) and out.taps is None
    y2, state, taps = selective_scan(**base, backend="triton", tap_positions=[2])
    assert state is None and taps.shape == (2, 1, 6, 4)
    assert_close(y2, y, name="y")


def test_auto_picks_chunked_on_cpu() -> None:
    assert dispatch.resolve_backend("selective_scan", "auto", torch.zeros(1)) == "chunked"


def test_triton_on_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    base = make_inputs(seq_len=4, device="cpu")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        selective_scan(**base, backend="triton")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        selective_scan_triton(**base)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="^backend: expected 'auto' or one of"):
        selective_scan(**make_inputs(seq_len=4), backend="cuda")


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_large_shape_matches_ref() -> None:
    """Compiled kernels on a Mamba-sized block: many channel blocks and checkpoint chunks."""
    assert dispatch.resolve_backend("selective_scan", "auto", torch.zeros(1, device="cuda")) == "triton"
    base = make_inputs(batch=2, d_inner=200, d_state=16, seq_len=333, seed=10, device="cuda")
    compare_with_ref(base, True, [0, 63, 64, 200, 332])


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
