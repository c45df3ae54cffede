"""State-collapse mitigations (Stuffed Mamba; docs/methods.md §5), as context managers, and the
architecture views they share with the diagnosis (every one the mixer's answer, seqlens.models.mixer).

Mitigations (context managers; they act on the state carried between chunks)
-----------------------------------------------------------------------------
``stream`` runs each chunk through the fused kernels, so the state can only be edited where it is
carried: :func:`normalize_states` and :func:`state_window` rewrite the state each mixer returns
at the end of every chunk (``stream`` / ``step`` / ``forward_chunk``; a full ``forward`` from an
empty state is unchanged). With ``chunk=1`` they are the per-token rules. :func:`forget_more`
edits hooks, so it acts on every token and in every entry point.

- :func:`normalize_states`: ``h ← h · τ/‖h‖`` when ``‖h‖ > τ``, per batch row, layer and head
  (Frobenius norm of the head view above; the intended rule of docs/methods.md §5, whose official
  code inverts the ratio). ``τ [n_layers, n_heads]``: the largest head norm on a reference prompt
  (default: 8 rows of the model's own task stream, ``L`` tokens each). Mamba's conv state is left alone; for
  the LSTM only the cell ``c`` is rescaled.
- :func:`forget_more` (``b_scale`` scales the write, ``decay_scale = c`` raises the decay to the
  power ``c``, i.e. multiplies the log decay; the write is unchanged by ``c``):

  ========  ===============================================================================
  mamba     ``hook_delta`` Δ·c and ``hook_B`` B·b_scale/c: ``exp(cΔA)`` with ``Δ B`` · b_scale
            (exactly "A multiplied by c", Stuffed Mamba's Δ/A multiplier without changing the
            input weight)
  gla       ``hook_log_decay`` log g·c; ``hook_k`` k·b_scale (what ``kᵀv`` writes)
  retnet    same as gla (the constant log γ goes through hook_log_decay too)
  mingru    ``hook_input_gate`` z' = 1 − (1 − z)^c; ``hook_candidate`` h̃ · b_scale · z/z' (so the
            write z·h̃ is unchanged by c)
  minlstm   ``hook_decay`` f'^c; ``hook_input_gate`` i'·b_scale
  lstm      ``hook_decay`` f^c; ``hook_input_gate`` i·b_scale (nonlinear: the edits feed the LSTM's replay)
  fox       ``hook_log_decay`` log f·c (``b_scale`` must be 1); softmax attention: not
            applicable (NotImplementedError)
  ========  ===============================================================================

  With a growing decay (≥ 1), ``c > 1`` grows it faster: use ``b_scale`` there.
- :func:`state_window`: sliding window by state difference ``h_(t−r,t] = h_t − (∏_{k=t−r+1..t}
  a_k) h_{t−r}`` (docs/methods.md §5). Linear recurrences only (mamba, gla, retnet, mingru, minlstm):
  at each chunk end the chunk's own contribution ``S_j = h_end − D_j ⊙ h_start`` (``D_j`` the
  chunk's cumulative decay, from the decay hooks) joins a queue; the oldest chunks leave it, each
  subtracted with its decay since (log-decay prefix sums in float64), while the rest still cover
  ``window`` tokens. The carried state is then exactly the state of the last ``window`` tokens
  from a zero state (given the coefficients the run realised) when ``window`` is a multiple of
  the chunk length; otherwise the window rounds up to whole chunks. Memory: ``window / chunk``
  chunk states. LSTM: NotImplementedError (nonlinear). Attention: the KV cache (and FoX's
  cumulative forget) is cut to its last ``window`` entries.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from seqlens.models.mixer import LOG_FLOOR, NotApplicableError, StateSpec, applies_to, raises_not_applicable  # noqa: F401
from seqlens.probes.collapse_result import DEFAULT_CHUNK, REFERENCE_ROWS
from seqlens.probes.collapse_sources import _Generated, _positive_float, _positive_int, train_length

# active mitigations per model, recorded in the settings of every CollapseResult
_ACTIVE: "weakref.WeakKeyDictionary[Any, list[dict]]" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- architecture views
# Everything architecture-specific is the mixer's answer (seqlens.models.mixer): its state_spec
# (which state entry, its layout, linear or not), state_view, decay_hooks / decay /
# log_chunk_decay and forget_hooks.


def _check_model(model) -> None:
    from seqlens.models.base import SeqModel

    if not isinstance(model, SeqModel):
        raise TypeError(f"model: expected a seqlens SeqModel, got {type(model).__name__}")


def _mixer(model, layer: int = 0):
    return model.blocks[layer].mixer


def _fixed_state(model) -> bool:
    """Whether the mixers carry a fixed-size state (not a KV cache)."""
    return all(m.state_spec is not None and m.state_spec.fixed_size for m in model.mixers)


def n_state_heads(model) -> int:
    """Heads the statistics are reported for: ``model.n_groups`` (attention / GLA heads, or
    ``cfg.n_groups`` channel groups of Mamba's d_inner / minGRU, minLSTM, LSTM's D_h)."""
    _check_model(model)
    return model.n_groups


def head_view(state: Tensor, heads: int) -> Tensor:
    """``[B, ...] -> [B, H, G]``: a layer's state split into ``heads`` contiguous groups along the
    first non-batch dim (Mamba ``[B, D, N]``, GLA ``[B, H, d_k, d_v]``, minGRU / LSTM ``[B, D]``)."""
    return StateSpec.head_view(state, heads)


def _decay_hooks(model) -> tuple[str, ...]:
    """Hook names (under ``blocks.{l}.mixer``) whose final values give the decay."""
    return _mixer(model).decay_hooks


def _decay_tensor(model, layer: int, seen: dict[str, Tensor], heads: int) -> Tensor | None:
    """The per-token decay of the last chunk, ``[B, T, H, G]`` (G: the head's decay elements)."""
    d = _mixer(model, layer).decay(seen) if seen else None
    if d is None:
        return None
    B, T = d.shape[:2]
    return d.reshape(B, T, heads, -1)


def _log_chunk_decay(model, layer: int, seen: dict[str, Tensor]) -> Tensor:
    """log of the chunk's cumulative decay, broadcastable to the layer's state (float64)."""
    return _mixer(model, layer).log_chunk_decay(seen)


# ----------------------------------------------------------------------------- hook readers


def _store(store: dict[str, Tensor], name: str, module, inputs, output) -> None:
    store[name] = output.detach()


@contextlib.contextmanager
def _last_values(model, names: Sequence[str]) -> Iterator[list[dict[str, Tensor]]]:
    """Yields ``seen[layer][name]``: the value of ``blocks.{l}.mixer.{name}`` in the layer's last
    mixer call, after every other hook on it. The readers are registered on the hook points right
    before each mixer call (a forward pre-hook), so they run after all hooks registered earlier —
    edits included — and removed right after (the LSTM's replay calls a hook several times; the
    last call, on the whole chunk, wins)."""
    seen: list[dict[str, Tensor]] = [{} for _ in model.blocks]
    handles: list[Any] = []
    live: list[list[Any]] = [[] for _ in model.blocks]

    def pre(layer: int, module, args, kwargs):
        seen[layer].clear()
        for name in names:
            live[layer].append(getattr(module, name).register_forward_hook(partial(_store, seen[layer], name)))

    def post(layer: int, module, args, kwargs, output):
        for h in live[layer]:
            h.remove()
        live[layer].clear()

    if names:
        for l, block in enumerate(model.blocks):
            handles.append(block.mixer.register_forward_pre_hook(partial(pre, l), with_kwargs=True))
            handles.append(block.mixer.register_forward_hook(partial(post, l), with_kwargs=True,
                                                             always_call=True))
    try:
        yield seen
    finally:
        for h in handles + [h for hs in live for h in hs]:
            h.remove()


@contextlib.contextmanager
def _mitigation(model, info: dict):
    _ACTIVE.setdefault(model, []).append(info)
    try:
        yield
    finally:
        _ACTIVE[model].remove(info)


# ----------------------------------------------------------------------------- mitigations


def _state_key(model, what: str) -> str:
    """The state entry the mitigations rescale (``state_spec.key``); NotApplicableError for a KV cache."""
    _check_model(model)
    if not _fixed_state(model):
        raise NotApplicableError(f"{what}: arch {model.cfg.arch!r} has no fixed-size recurrent state (its state is "
                                 "the KV cache); not applicable")
    return _mixer(model).state_spec.key


def _linear_or_cache(model) -> bool:
    spec = _mixer(model).state_spec
    return not spec.fixed_size or spec.linear


@applies_to(_fixed_state, needs="a fixed-size recurrent state (not a KV cache)")
def reference_norms(model, reference: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """``[n_layers, H]``: the largest head state norm (over batch rows and chunk ends) while
    streaming ``reference [B, L]``."""
    key = _state_key(model, "reference_norms")
    if not isinstance(reference, Tensor) or reference.dim() != 2 or reference.shape[1] == 0:
        raise ValueError(f"reference: expected token ids [batch, length], got "
                         f"{list(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__}")
    heads = n_state_heads(model)
    best = torch.zeros(model.cfg.n_layers, heads, dtype=torch.float64)

    def cb(start, logits, state):
        for l, s in enumerate(state.layers):
            norms = head_view(s[key], heads).double().norm(dim=-1).amax(0).cpu()
            best[l] = torch.maximum(best[l], norms)

    model.stream(reference.to(model.device), chunk_size=chunk, callback=cb, return_logits=False)
    return best.float()


def _default_reference(model) -> Tensor:
    L, _ = train_length(model)
    if model.recipe is None:
        raise ValueError("reference: the model has no training recipe to draw a reference prompt from; pass "
                         "reference tokens [batch, length] or tau")
    return _Generated(model, "task", REFERENCE_ROWS, 0).get(0, L)[0]


@applies_to(_fixed_state, needs="a fixed-size recurrent state (not a KV cache)")
@contextlib.contextmanager
def normalize_states(model, tau: float | Tensor | None = None, reference: Tensor | None = None):
    """State normalisation (Stuffed Mamba; docs/methods.md §5): inside the block, every state a mixer
    carries to the next chunk is rescaled per batch row, layer and head, ``h ← h·τ/‖h‖`` when
    ``‖h‖ > τ`` (see the module docstring for what "state" and "head" are per architecture).

    ``tau``: a number (every head), a tensor ``[n_layers, H]``, or None: the largest head norms
    reached on ``reference`` (token ids ``[B, L]``; default: 8 rows of the model's own task stream
    of training length, see :func:`reference_norms`). Yields ``{"tau": [n_layers, H], "clipped":
    [n_layers, H]}``, ``clipped`` counting the (chunk, row) rescalings."""
    key = _state_key(model, "normalize_states")
    heads = n_state_heads(model)
    shape = (model.cfg.n_layers, heads)
    if tau is None:
        tau_t = reference_norms(model, _default_reference(model) if reference is None else reference)
    elif isinstance(tau, Tensor):
        if tuple(tau.shape) != shape:
            raise ValueError(f"tau: expected a number or a tensor of shape {list(shape)}, got {list(tau.shape)}")
        tau_t = tau.detach().float().cpu()
    else:
        tau_t = torch.full(shape, _positive_float("tau", tau))
    if not bool((tau_t > 0).all()) or not bool(torch.isfinite(tau_t).all()):
        raise ValueError(f"tau: expected positive finite thresholds, got {tau_t.tolist()}")
    clipped = torch.zeros(shape, dtype=torch.long)

    def hook(layer: int, module, args, kwargs, output):
        out, new = output
        if new is None:
            return None
        s = new[key]
        view = head_view(s, heads)
        norm = view.double().norm(dim=-1, keepdim=True)  # [B, H, 1]
        t = tau_t[layer].to(device=s.device, dtype=torch.float64)[None, :, None]
        over = norm > t
        clipped[layer] += over[..., 0].sum(0).cpu()
        scale = torch.where(over, t / norm.clamp_min(1e-300), torch.ones_like(norm)).to(s.dtype)
        return out, {**new, key: (view * scale).reshape(s.shape)}

    handles = [b.mixer.register_forward_hook(partial(hook, l), with_kwargs=True) for l, b in enumerate(model.blocks)]
    info = {"name": "normalize_states", "tau": tau_t.tolist()}
    try:
        with _mitigation(model, info):
            yield {"tau": tau_t, "clipped": clipped}
    finally:
        for h in handles:
            h.remove()


def _forget_hooks(model, b_scale: float, c: float) -> list[tuple[str, Callable]]:
    """Every layer's ``mixer.forget_hooks`` (NotApplicableError for softmax attention)."""
    _check_model(model)
    return [(f"blocks.{l}.mixer.{n}", fn) for l, b in enumerate(model.blocks)
            for n, fn in b.mixer.forget_hooks(b_scale, c)]


@applies_to(lambda model: raises_not_applicable(lambda: _forget_hooks(model, 1.0, 1.0)),
            needs="mixers that declare their decay and input write (Mixer.forget_hooks)")
@contextlib.contextmanager
def forget_more(model, b_scale: float = 1.0, decay_scale: float = 1.0):
    """"Forget more, remember less" (Stuffed Mamba; docs/methods.md §5): inside the block the state
    write is scaled by ``b_scale`` and every decay ``a`` becomes ``a^decay_scale`` (log decay ×
    ``decay_scale``), through the per-architecture hooks listed in the module docstring. Acts on
    every token and every entry point (forward, step, stream)."""
    b_scale, decay_scale = _positive_float("b_scale", b_scale), _positive_float("decay_scale", decay_scale)
    hooks = _forget_hooks(model, b_scale, decay_scale)
    info = {"name": "forget_more", "b_scale": b_scale, "decay_scale": decay_scale}
    with model.hooks(fwd_hooks=hooks), _mitigation(model, info):
        yield info


class _Window:
    """Per-layer queue of chunk contributions for :func:`state_window`."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Tensor, Tensor, int]] = deque()  # (S_j, log-decay prefix after j, T_j)
        self.prefix: Tensor | None = None
        self.total = 0


@applies_to(_linear_or_cache, needs="a linear recurrence or a KV cache (the state difference of a nonlinear cell is not a window)")
@contextlib.contextmanager
def state_window(model, window: int):
    """Sliding window by state difference (docs/methods.md §5): inside the block, the state each mixer
    carries to the next chunk holds only the last ``window`` tokens (rounded up to whole chunks),
    ``h_(t−r,t] = h_t − (∏ a) h_{t−r}``; exact for linear recurrences (see the module docstring).
    Attention: the KV cache keeps its last ``window`` entries. LSTM: NotImplementedError."""
    window = _positive_int("window", window)
    _check_model(model)
    spec = _mixer(model).state_spec
    if spec.fixed_size and not spec.linear:
        raise NotApplicableError(f"state_window: the {type(_mixer(model)).__name__}'s recurrence is nonlinear (gates "
                                 "read h), so the state of the last tokens is not a difference of states; not applicable")
    info = {"name": "state_window", "window": window}
    if not spec.fixed_size:
        with _mixer_forward_hooks(model, lambda layer: partial(_trim_cache, window)), _mitigation(model, info):
            yield info
        return
    key = spec.key
    queues = [_Window() for _ in model.blocks]
    with _last_values(model, _decay_hooks(model)) as seen:

        def hook(layer: int, module, args, kwargs, output):
            out, new = output
            old = kwargs.get("state")
            if new is None or old is None:
                return None
            return out, {**new, key: _slide(queues[layer], model, layer, seen[layer], old[key], new[key], window)}

        with _mixer_forward_hooks(model, lambda layer: partial(hook, layer)), _mitigation(model, info):
            yield info


@contextlib.contextmanager
def _mixer_forward_hooks(model, make: Callable[[int], Callable]):
    """Register ``make(layer)`` as a torch forward hook (with kwargs) on every mixer; removed on exit."""
    handles = [b.mixer.register_forward_hook(make(l), with_kwargs=True) for l, b in enumerate(model.blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _slide(q: _Window, model, layer: int, seen: dict[str, Tensor], h_in: Tensor, h_out: Tensor,
           window: int) -> Tensor:
    """One chunk of the window: queue the chunk's own contribution, drop the oldest chunks while
    the rest still cover ``window`` tokens, return the windowed state."""
    T = next(iter(seen.values())).shape[1]
    log_d = _log_chunk_decay(model, layer, seen)  # broadcastable to the state
    s_j = h_out - torch.exp(log_d).to(h_out.dtype) * h_in  # this chunk's contribution from a zero state
    q.prefix = log_d if q.prefix is None else q.prefix + log_d
    q.queue.append((s_j, q.prefix, T))
    q.total += T
    h = h_out
    while q.total - q.queue[0][2] >= window:
        s_o, p_o, t_o = q.queue.popleft()
        h = h - torch.exp(q.prefix - p_o).to(h.dtype) * s_o
        q.total -= t_o
    return h


def _trim_cache(window: int, module, args, kwargs, output):
    out, new = output
    if new is None:
        return None
    trimmed = {k: (v[:, :, -window:] if k in ("k", "v", "c") and v.shape[2] > window else v) for k, v in new.items()}
    return out, trimmed
