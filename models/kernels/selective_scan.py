"""Mamba-1 selective scan: the reference, the CPU path and the dispatcher.

This module provides three entry points sharing the argument layout of
mamba-ssm's ``selective_scan_fn``:

* :func:`selective_scan_ref` -- the plain twin (in ``selective_scan_ref.py``,
  re-exported here): a Python loop over time in float32 (float64 if the inputs
  are float64).  Obviously correct, slow, and the specification the fast paths
  are tested against.
* :func:`selective_scan_chunked` -- the fast CPU path.  It walks the sequence
  in chunks of ``chunk_size`` steps and never allocates a ``[batch, d_inner,
  seq_len, d_state]`` tensor: working memory is ``O(batch * d_inner * d_state
  * chunk_size)``.
* :func:`selective_scan` -- a dispatcher choosing a backend: ``"triton"``
  (the Triton kernels of ``selective_scan_triton.py``, forward and backward,
  for CUDA tensors or under ``TRITON_INTERPRET=1``), ``"chunked"`` or
  ``"ref"``; ``"auto"`` is Triton on CUDA and the chunked path otherwise.

Shapes (``Bt`` = batch, ``Dn`` = d_inner, ``N`` = d_state, ``L`` = seq_len)::

    u:             [Bt, Dn, L]   SSM input (after the causal conv and SiLU)
    delta:         [Bt, Dn, L]   step sizes (raw; see delta_bias / delta_softplus)
    A:             [Dn, N]       state matrix (real, normally negative)
    B:             [Bt, N, L]    input projection
    C:             [Bt, N, L]    output projection
    D:             [Dn] | None   skip connection
    z:             [Bt, Dn, L] | None   gate, y *= silu(z)
    delta_bias:    [Dn] | None   added to delta before the softplus
    initial_state: [Bt, Dn, N] | None   state before the first step (zeros if None)

Recurrence, with the state ``h`` of shape ``[Bt, Dn, N]``::

    for t in range(L):
        dt  = delta[:, :, t] (+ delta_bias) (-> softplus if delta_softplus)
        h   = exp(dt[..., None] * A) * h + dt[..., None] * B[:, None, :, t] * u[:, :, t, None]
        y_t = (h * C[:, None, :, t]).sum(-1) + D * u[:, :, t]
    y = y * silu(z)                                 # if z is given

Return convention (identical for every function here):

* neither ``return_final_state`` nor ``tap_positions`` requested: ``y``
  (``[Bt, Dn, L]``, dtype of ``u``);
* otherwise a :class:`ScanOutput` ``(y, final_state, taps)`` where
  ``final_state`` is the state after the last step (``[Bt, Dn, N]``) or
  ``None`` when not requested, and ``taps`` holds the states after the steps
  listed in ``tap_positions`` (``[Bt, len(tap_positions), Dn, N]``) or
  ``None``.  States are in the compute dtype (float32, or float64 for float64
  inputs).

Layout note: the chunked and Triton paths work in ``[batch, seq_len, ...]``
memory layout.  Inputs that are transposed views of ``[batch, seq_len, ...]``
tensors (as Mamba blocks naturally produce) are used without copies, and the
``y`` they return is a ``[Bt, Dn, L]`` view of ``[Bt, L, Dn]``-contiguous
memory, so ``y.transpose(1, 2)`` (what the output projection wants) is
contiguous.  Call ``y.contiguous()`` if ``[Bt, Dn, L]`` memory is required.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlens.validate import positive_int

from .common import ScanOutput, TapPositions
from .common import compute_dtype as _compute_dtype
from .common import package_scan as _package
from .common import validate_scan_inputs as _validate_inputs
from .common import validate_tap_positions as _validate_tap_positions
from .dispatch import resolve_backend
from .selective_scan_ref import finish_output as _finish_output
from .selective_scan_ref import prepare_delta as _prepare_delta
from .selective_scan_ref import selective_scan_ref

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ScanOutput",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

#: Default number of time steps per chunk for :func:`selective_scan_chunked`.
#: Measured with 2 threads on an AVX2 CPU at d_inner=1536, d_state=16,
#: batch=1, seq_len 1024 and 4096: 32 to 64 are equally fast, 16 is ~5%
#: slower (per-chunk op overhead), 8 ~15% slower and 128 ~15% slower (the
#: buffers outgrow the caches).  32 is the smallest chunk at full speed; its
#: two buffers take 2 x 3 MiB at that size.
DEFAULT_CHUNK_SIZE = 32

# --------------------------------------------------------------------------- #
# Chunked fast path
# --------------------------------------------------------------------------- #


def _scan_chunks_inplace(
    dt: Tensor,
    du: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    h: Tensor,
    chunk_size: int,
    taps_at: list[int] | None,
    chunk_starts: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunked scan with preallocated buffers and in-place ops (no autograd).

    All per-step inputs are in ``[batch, seq_len, ...]`` ("time-major within
    a batch") layout, so that one time step of one batch row is contiguous.

    Args:
        dt: Prepared step sizes ``[Bt, L, Dn]``, contiguous.
        du: ``dt * u`` as ``[Bt, L, Dn]``, contiguous.
        A: ``[Dn, N]``.
        Bs: ``B`` as ``[Bt, L, N]``, contiguous.
        Cs: ``C`` as ``[Bt, L, N]``, contiguous.
        h: Initial state ``[Bt, Dn, N]``; it is overwritten with the final state.
        chunk_size: Steps per chunk.
        taps_at: Sorted positions whose states are returned, or ``None``.
        chunk_starts: If given, a copy of the state at the start of every
            chunk (``[Bt, Dn, N]`` each) is appended to this list; the
            differentiable path keeps them to recompute chunks in backward.

    Returns:
        ``(y, h, taps)``: ``y`` as ``[Bt, L, Dn]`` (without the ``D`` skip or
        the gate), ``h`` the final state and ``taps`` of shape
        ``[Bt, n_taps, Dn, N]`` or ``None``.
    """
    batch, seq_len, d_inner = dt.shape
    d_state = A.shape[1]
    steps = min(chunk_size, seq_len)
    # Chunk buffers, reused for every chunk.  ``states`` first receives
    # dt*u*B and is then overwritten, step by step, with the states.
    decay = dt.new_empty((batch, steps, d_inner, d_state))
    states = dt.new_empty((batch, steps, d_inner, d_state))
    decay_steps = decay.unbind(1)  # per-step [Bt, Dn, N] views
    state_steps = states.unbind(1)
    y = dt.new_empty((batch, seq_len, d_inner))
    taps = None
    if taps_at is not None:
        taps = dt.new_empty((batch, len(taps_at), d_inner, d_state))
    next_tap = 0

    for start in range(0, seq_len, chunk_size):
        stop = min(start + chunk_size, seq_len)
        n = stop - start
        if chunk_starts is not None:
            chunk_starts.append(h.clone())
        # decay[:, t] = exp(dt_t * A);  states[:, t] = dt_t * u_t * B_t
        decay_c = torch.mul(dt[:, start:stop, :, None], A, out=decay[:, :n])
        decay_c.exp_()
        torch.mul(du[:, start:stop, :, None], Bs[:, start:stop, None, :], out=states[:, :n])
        # Sequential recurrence, one fused multiply-add per step:
        # states[:, t] += decay[:, t] * states[:, t - 1]   (the carry h before t = 0).
        prev = h
        for i in range(n):
            state_steps[i].addcmul_(decay_steps[i], prev)
            prev = state_steps[i]
        h.copy_(prev)
        # y[b, t, :] = C[b, t, :] @ states[b, t].T, for the whole chunk at once.
        # The [1, N] x [N, Dn] orientation is markedly faster than [Dn, N] x [N, 1].
        for b in range(batch):
            torch.bmm(
                Cs[b, start:stop, None, :],
                states[b, :n].transpose(1, 2),
                out=y[b, start:stop, None, :],
            )
        if taps is not None:
            while next_tap < len(taps_at) and taps_at[next_tap] < stop:
                taps[:, next_tap].copy_(state_steps[taps_at[next_tap] - start])
                next_tap += 1
    return y, h, taps


class _ChunkedScanFn(torch.autograd.Function):
    """The in-place chunked scan with a hand-written backward (the training path).

    Forward runs :func:`_scan_chunks_inplace` unchanged, additionally keeping
    a copy of the state at the start of every chunk.  Backward walks the
    chunks in reverse; for each it recomputes the chunk's decays and states
    from its start state into ``[Bt, chunk, Dn, N]`` buffers (the same
    in-place recurrence as forward), runs the adjoint recurrence backwards
    through the chunk::

        lam_t = C_t (x) dy_t  (+ dtaps_t)  +  exp(dt_{t+1} A) * lam_{t+1}

    (``lam`` is dLoss/dh_t; it enters the last chunk as dLoss/dfinal_state)
    with one fused multiply-add per step, and then forms every input
    gradient for the chunk with a few batched ops::

        d(dt*u)_t = sum_n lam_t B_t          dB_t = sum_d lam_t (dt*u)_t
        dC_t      = sum_d dy_t h_t           g_t  = lam_t * exp(dt_t A) * h_{t-1}
        d dt_t    = sum_n g_t A              dA  += sum_{b,t} g_t dt_t
        dh_init   = exp(dt_0 A) * lam_0

    Memory: the inputs, one ``[Bt, Dn, N]`` state per chunk, and three chunk
    buffers; nothing of size ``[Bt, L, Dn, N]``.  Not twice differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        dt: Tensor,
        du: Tensor,
        A: Tensor,
        Bs: Tensor,
        Cs: Tensor,
        h0: Tensor,
        chunk_size: int,
        taps_at: list[int] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch, _, d_inner = dt.shape
        d_state = A.shape[1]
        starts: list[Tensor] = []
        h = h0.clone(memory_format=torch.contiguous_format)  # never write into the caller's tensor
        y, h, taps = _scan_chunks_inplace(dt, du, A, Bs, Cs, h, chunk_size, taps_at, chunk_starts=starts)
        if taps is None:
            taps = dt.new_empty((batch, 0, d_inner, d_state))
        ctx.save_for_backward(dt, du, A, Bs, Cs, *starts)
        ctx.chunk_size = chunk_size
        ctx.taps_at = list(taps_at or ())
        return y, h, taps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: Tensor, gh: Tensor, gtaps: Tensor
    ) -> tuple[Tensor | None, ...]:
        dt, du, A, Bs, Cs, *starts = ctx.saved_tensors
        chunk_size: int = ctx.chunk_size
        taps_at: list[int] = ctx.taps_at
        batch, seq_len, d_inner = dt.shape
        d_state = A.shape[1]
        gy = gy.contiguous()
        steps = min(chunk_size, seq_len)
        shape = (batch, steps, d_inner, d_state)
        decay, states, lam = dt.new_empty(shape), dt.new_empty(shape), dt.new_empty(shape)
        decay_steps, state_steps, lam_steps = decay.unbind(1), states.unbind(1), lam.unbind(1)
        d_dt = torch.empty_like(dt)
        d_du = torch.empty_like(du)
        d_B = torch.empty_like(Bs)
        d_C = torch.empty_like(Cs)
        d_A = torch.zeros(A.shape, dtype=A.dtype, device=A.device)
        carry = gh  # exp(dt_{t+1} A) * lam_{t+1} for t = the last step of the current chunk
        next_tap = len(taps_at) - 1

        for ci in reversed(range(len(starts))):
            start = ci * chunk_size
            stop = min(start + chunk_size, seq_len)
            n = stop - start
            h_start = starts[ci]
            # Recompute the chunk: decays and states, exactly as in forward.
            dec = torch.mul(dt[:, start:stop, :, None], A, out=decay[:, :n])
            dec.exp_()
            st = torch.mul(du[:, start:stop, :, None], Bs[:, start:stop, None, :], out=states[:, :n])
            prev = h_start
            for i in range(n):
                state_steps[i].addcmul_(decay_steps[i], prev)
                prev = state_steps[i]
            gy_c = gy[:, start:stop]
            # dC_t[n] = sum_d dy_t[d] h_t[d, n]
            d_C[:, start:stop] = torch.matmul(gy_c[:, :, None, :], st).squeeze(2)
            # Adjoint recurrence, backwards through the chunk.
            lm = torch.mul(gy_c[:, :, :, None], Cs[:, start:stop, None, :], out=lam[:, :n])
            while next_tap >= 0 and taps_at[next_tap] >= start:
                lam_steps[taps_at[next_tap] - start].add_(gtaps[:, next_tap])
                next_tap -= 1
            lam_steps[n - 1].add_(carry)
            for i in range(n - 2, -1, -1):
                lam_steps[i].addcmul_(decay_steps[i + 1], lam_steps[i + 1])
            carry = decay_steps[0] * lam_steps[0]
            # Gradients of x_t = (dt*u)_t B_t.
            # (Reductions are written as multiply-then-sum into a scratch buffer:
            # on CPU that is faster than einsum, which permutes for these.)
            d_B[:, start:stop] = torch.matmul(du[:, start:stop, None, :], lm).squeeze(2)
            # Gradient of dt_t A: lam_t * exp(dt_t A) * h_{t-1}  (in place over the decays).
            # h_{t-1} is read from ``states`` before that buffer is reused as scratch.
            g = dec.mul_(lm)
            g[:, 1:].mul_(st[:, : n - 1])
            g[:, 0].mul_(h_start)
            scratch = torch.mul(lm, Bs[:, start:stop, None, :], out=st)
            torch.sum(scratch, -1, out=d_du[:, start:stop])
            torch.sum(torch.mul(g, A, out=scratch), -1, out=d_dt[:, start:stop])
            d_A += torch.mul(g, dt[:, start:stop, :, None], out=scratch).sum((0, 1))

        return d_dt, d_du, d_A, d_B, d_C, carry, None, None


def _needs_grad(*tensors: Tensor | None) -> bool:
    """True if autograd is on and any given tensor requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    tap_positions: TapPositions | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor | ScanOutput:
    """Fast CPU selective scan, equal to :func:`selective_scan_ref`.

    The sequence is processed time-major (``[batch, seq_len, ...]`` memory)
    in chunks of ``chunk_size`` steps.  For each chunk, ``exp(dt * A)`` and
    ``dt * u * B`` are written into two reused ``[batch, chunk, d_inner,
    d_state]`` buffers, the recurrence runs in place with one fused
    multiply-add per step, and the chunk's outputs come from one batched
    matmul against ``C`` per batch row.  No ``[batch, d_inner, seq_len,
    d_state]`` tensor is ever allocated; states at ``tap_positions`` are
    copied out of the chunk buffers as they pass.  The returned ``y`` is a
    view of ``[batch, seq_len, d_inner]`` memory (see the module docstring).

    If autograd is enabled and any input requires a gradient, the same
    forward runs inside a custom autograd function whose backward recomputes
    each chunk from a saved per-chunk state and runs the adjoint recurrence
    in reverse (see :class:`_ChunkedScanFn`).  Memory stays bounded: besides
    the ``[batch, seq_len, ...]`` inputs it keeps one ``[batch, d_inner,
    d_state]`` state per chunk.  The function is not twice differentiable.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        return_final_state, tap_positions: As for :func:`selective_scan_ref`.
        chunk_size: Time steps per chunk (``>= 1``).

    Returns:
        ``y`` alone, or a :class:`ScanOutput` if ``return_final_state`` or
        ``tap_positions`` is given (see the module docstring).
    """
    positive_int("chunk_size", chunk_size)
    batch, d_inner, seq_len, d_state = _validate_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    taps_at = _validate_tap_positions(tap_positions, seq_len)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)

    # Work in [batch, seq_len, ...] layout, where one step of one batch row is
    # contiguous.  The transposes below are free when the caller's tensors are
    # already stored that way, as in Hugging Face's Mamba where delta, z, B
    # and C are transposed views of [batch, seq_len, ...] projections.
    u_s = u.to(dtype).transpose(1, 2).contiguous()
    dt = _prepare_delta(delta, delta_bias, delta_softplus, dtype).transpose(1, 2).contiguous()
    du = dt * u_s
    Bs = B.to(dtype).transpose(1, 2).contiguous()
    Cs = C.to(dtype).transpose(1, 2).contiguous()
    A_c = A.to(dtype)
    if initial_state is None:
        h = u.new_zeros((batch, d_inner, d_state), dtype=dtype)
    else:
        h = initial_state.to(dtype)

    if _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y_s, h, taps = _ChunkedScanFn.apply(dt, du, A_c, Bs, Cs, h, chunk_size, taps_at)
        if taps_at is None:
            taps = None
    else:
        h = h.clone(memory_format=torch.contiguous_format)  # never write into the caller's tensor
        y_s, h, taps = _scan_chunks_inplace(dt, du, A_c, Bs, Cs, h, chunk_size, taps_at)

    z_s = None if z is None else z.transpose(1, 2)
    y = _finish_output(y_s, u_s, D, z_s, u.dtype).transpose(1, 2)
    return _package(y, h, taps, return_final_state)


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    tap_positions: TapPositions | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor | ScanOutput:
    """Selective scan with a choice of implementation.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        return_final_state, tap_positions: As for :func:`selective_scan_ref`.
        backend: ``"triton"`` (the Triton kernels, forward and backward; CUDA
            tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
            ``"chunked"`` (:func:`selective_scan_chunked`), ``"ref"``
            (:func:`selective_scan_ref`) or ``"auto"`` (Triton for CUDA
            tensors when Triton imports, the chunked path otherwise); see
            :func:`~seqlens.models.kernels.dispatch.resolve_backend`.
        chunk_size: Passed to the chunked backend; ignored by the others.

    Returns:
        ``y`` alone, or a :class:`ScanOutput` if ``return_final_state`` or
        ``tap_positions`` is given (see the module docstring).

    Raises:
        ValueError: for an unknown ``backend``.
        RuntimeError: for ``backend="triton"`` when Triton cannot run on
            ``u``'s device.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, tap_positions)
    chosen = resolve_backend("selective_scan", backend, u)
    if chosen == "ref":
        return selective_scan_ref(*args)
    if chosen == "triton":
        # Imported here, not at the top: triton.jit fixes interpreter-vs-compiler when the
        # kernels are defined, so the module must not load before the backend is chosen.
        from .selective_scan_triton import selective_scan_triton

        return selective_scan_triton(*args)
    return selective_scan_chunked(*args, chunk_size=chunk_size)
