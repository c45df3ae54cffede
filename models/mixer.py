"""The mixer protocol (docs/design.md, "The mixer protocol"): what every sequence mixer answers, so that
analysis code asks the mixer instead of testing its class or ``cfg.arch``.

A mixer (softmax / FoX attention, Mamba, GLA / RetNet, minGRU / minLSTM, LSTM) subclasses
:class:`Mixer` and declares:

- ``HOOKS``: one :class:`HookSpec` per hook point (name, shape, meaning, condition); generates
  ``docs/hooks.md`` (:mod:`seqlens.models.hookdoc`), ``seqlens hooks`` and the hook tests;
- ``groups``: the :class:`Groups` its "heads" are (attention heads, or contiguous channel groups of
  a recurrent width) and the per-group output hook (``hook_z``) that head ablation edits;
- ``ablation_hooks(site, mode)``: the zero / mean / uniform edit of a group as hook functions;
- ``decay_hooks`` / ``decay(seen)`` / ``log_chunk_decay(seen)``: its forget quantities;
  ``forget_hooks(b_scale, c)``: the ``forget_more`` edit;
- ``gates()``: its gates in [0, 1] as :class:`GateSpec`; ``memory_hook``: the units that carry memory;
- ``state_spec``: the :class:`StateSpec` of its carried state (``None`` for a KV cache);
- ``ov_factors()``: the value -> output path as :class:`OVFactors`;
- ``pattern(x)`` / ``implicit_attention(x)``: (implicit) attention; ``supports_state_taps``;
- ``backend``: the kernel backend ("auto" or one of ``BACKENDS``), set the same way on every mixer;
- ``lrp``: its :class:`LRPRules` (rule set and family), implemented by :mod:`seqlens.circuits.lrp`;
- ``handles_padding`` / ``pad_write_hooks``: how it takes a left-padded batch (it reads the
  model's ``Padding``; or the hooks whose zeroing at pads keeps its zero state untouched).

An analysis that does not apply raises :class:`NotApplicableError` and offers ``applies_to(model)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

HookList = list[tuple[str, Callable]]
MODES = ("zero", "mean", "uniform")
LOG_FLOOR = -1000.0  # per-token log decay floor (exp underflows to 0 long before)


class NotApplicableError(ValueError, NotImplementedError):
    """This analysis does not apply to this architecture (e.g. gates of a softmax Transformer, state
    taps of attention). A NotImplementedError (what these cases raised before) and a ValueError
    (the ``model`` argument is the wrong kind); analyses offer ``applies_to(model)`` to ask first."""


def applies_to(predicate: Callable[[Any], bool], needs: str = "") -> Callable:
    """Decorator: attach ``predicate(model) -> bool`` as ``fn.applies_to`` and the requirement it
    checks as ``fn.needs`` (e.g. "a fixed-size recurrent state"), so callers (the app) ask whether
    an analysis applies, and why not (:func:`not_applicable_reason`), instead of running it and
    catching :class:`NotApplicableError`."""
    def mark(fn: Callable) -> Callable:
        fn.applies_to = predicate
        fn.needs = needs
        return fn
    return mark


def not_applicable_reason(fn: Callable, model: Any) -> str | None:
    """None when analysis ``fn`` (decorated with :func:`applies_to`) applies to ``model``; else one
    line saying what it needs, e.g. ``"normalize_states needs a fixed-size recurrent state"``."""
    if not callable(getattr(fn, "applies_to", None)):
        raise TypeError(f"fn: {getattr(fn, '__name__', fn)!r} declares no applies_to predicate")
    if fn.applies_to(model):
        return None
    name = getattr(fn, "__name__", "this analysis")
    return f"{name} needs {fn.needs}" if fn.needs else f"{name} does not apply to this architecture"


def raises_not_applicable(call: Callable[[], Any]) -> bool:
    """True unless ``call()`` raises :class:`NotApplicableError` (for predicates built on a probe call)."""
    try:
        call()
    except NotApplicableError:
        return False
    return True


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class HookSpec:
    """One hook point of a module: ``name`` (relative to the module, e.g. ``hook_z``), ``shape``
    (an expression over B, L, T, H, H_kv, d_head, D, N, D_h, d_k, d_v, d_model, d_mlp), ``meaning``,
    and ``when``: a condition on the config under which it exists ("" = always; ``"rotary"``,
    ``"fox"``, ``"minlstm"``, ``"tap_states"`` (fires only inside ``SeqModel.tap_states``) ...)."""

    name: str
    shape: str
    meaning: str
    when: str = ""


@dataclass(frozen=True)
class Groups:
    """The "heads" of a mixer: ``n`` groups of a ``width``-wide axis. ``unit="head"``: group g is
    head g (dim 2 of ``hook [B, L, H, d]``); ``unit="channel"``: group g is channels
    ``[g·width/n, (g+1)·width/n)`` (last dim of ``hook [B, L, width]``). ``hook`` carries the
    per-group output (the one ``ablate_heads`` edits, and where "mean" records its reference)."""

    n: int
    width: int
    unit: str
    hook: str = "hook_z"

    @property
    def per_head(self) -> bool:
        return self.unit == "head"

    @property
    def size(self) -> int:
        return self.width // self.n

    def units(self, groups: list[int]) -> Tensor:
        """Head ids (``unit="head"``) or channel ids of ``groups``, as one LongTensor."""
        if self.per_head:
            return torch.tensor(groups, dtype=torch.long)
        g = self.size
        return torch.cat([torch.arange(h * g, (h + 1) * g) for h in groups])


@dataclass(frozen=True)
class GateSpec:
    """One gate of a mixer, read off ``hook`` (``[B, L, ...]``) and mapped to values in ``range``
    by ``transform`` (identity, 1 − x, exp, exp(ΔA) ...)."""

    name: str
    hook: str
    transform: Callable[[Tensor], Tensor]
    meaning: str
    range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class StateSpec:
    """Layout of the carried state. ``key``: the entry of the state dict that statistics, taps and
    ``normalize_states`` read (None: a KV cache); ``layout`` its shape; ``heads``: how it splits
    into the mixer's groups (contiguous along the first non-batch dim); ``linear``: the recurrence is
    linear in the state, so ``state_window`` can subtract old contributions; ``description`` what the
    collapse probe calls "the state"."""

    key: str | None
    layout: str
    description: str
    linear: bool = False

    @property
    def fixed_size(self) -> bool:
        return self.key is not None

    @staticmethod
    def head_view(state: Tensor, heads: int) -> Tensor:
        """``[B, ...] -> [B, H, G]``: the state split into ``heads`` contiguous groups."""
        return state.reshape(state.shape[0], heads, -1)


@dataclass(frozen=True)
class OVFactors:
    """``W_OV^h = W_V[h] @ W_O[h]``: ``W_V [H, d_model, r]``, ``W_O [H, r, d_model]``; ``kind``
    names the path (``"attention"``, ``"linear_attention"``, ``"mamba"``, ``"minrnn"``, ``"lstm"``),
    ``description`` says whether it is exact and what a linearisation dropped. Unpacks as
    ``W_V, W_O, kind``."""

    W_V: Tensor
    W_O: Tensor
    kind: str
    description: str = ""

    @property
    def exact(self) -> bool:
        return self.description.startswith("exact")

    def __iter__(self):
        return iter((self.W_V, self.W_O, self.kind))


@dataclass(frozen=True)
class LRPRules:
    """Declarative relevance-propagation rules of a mixer (the LRP issue implements them):
    ``detach``: factors treated as constants (gates, decays, softmax patterns: AttnLRP / the
    "gate rule"); ``uniform``: products whose relevance is split evenly between factors (the
    uniform rule of AttnLRP for multiplicative interactions); ``note``: where this comes from;
    ``method``: the rule set ``seqlens.circuits.lrp.attribute(method="auto")`` runs on this mixer
    ("attnlrp", "mambalrp", "lrp"); ``family``: which rule builder of ``seqlens.circuits.lrp.rules``
    implements it ("attention", "fox", "mamba", "linear_attention", "minrnn", "lstm")."""

    detach: tuple[str, ...] = ()
    uniform: tuple[str, ...] = ()
    note: str = ""
    method: str = "lrp"
    family: str = ""


# ----------------------------------------------------------------------------- ablation sites


@dataclass
class AblationSite:
    """The units one layer's ablation edits (heads or channels, see :class:`Groups`), the
    reference mean when "mean" recorded one, and activations captured during this forward."""

    layer: int
    units: Tensor
    per_head: bool
    mean: Tensor | None = None
    seen: dict[str, Tensor] = field(default_factory=dict)

    def take(self, x: Tensor) -> Tensor:
        return x[:, :, self.units] if self.per_head else x[..., self.units]

    def put(self, x: Tensor, value: Tensor | float) -> Tensor:
        """A copy of ``x`` with the ablated units set to ``value`` (broadcast)."""
        out, v = x.clone(), value if isinstance(value, float) else value.to(x.dtype)
        if self.per_head:
            out[:, :, self.units] = v
        else:
            out[..., self.units] = v
        return out

    def mean_value(self, x: Tensor) -> Tensor:
        """The units' mean: over ``reference`` when recorded, else over ``x``'s batch and positions."""
        mean = self.mean if self.mean is not None else x.float().mean((0, 1))
        return mean[self.units].to(x.device)

    def capture(self, key: str, x: Tensor, hook: Any = None) -> None:
        self.seen[key] = x

    def constant_edit(self, mode: str) -> Callable:
        """Hook that sets the units to 0 ("zero") or to their mean ("mean")."""
        def edit(x: Tensor, hook) -> Tensor:
            return self.put(x, 0.0 if mode == "zero" else self.mean_value(x))
        return edit


def causal_mean(x: Tensor) -> Tensor:
    """``y[:, t] = mean_{s≤t} x[:, s]`` along dim 1 of ``x [B, L, ...]`` (float32 sums)."""
    n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=torch.float32)
    return x.float().cumsum(1) / n.view(1, -1, *([1] * (x.dim() - 2)))


def scale_hook(factor: float) -> Callable:
    """Hook multiplying its tensor by ``factor``."""
    return lambda x, hook: x * factor


def gate_pow(x: Tensor, c: float) -> Tensor:
    """A gate in [0, 1] raised to the power ``c`` (negative values clipped to 0 first)."""
    return x if c == 1.0 else x.clamp_min(0) ** c


def pow_hook(c: float) -> Callable:
    """Hook raising a gate in [0, 1] to the power ``c`` (:func:`gate_pow`)."""
    return lambda x, hook: gate_pow(x, c)


# ----------------------------------------------------------------------------- the base class


class Mixer(nn.Module):
    """Base of every sequence mixer. Calling convention: ``forward(x [B, T, d_model], state=None,
    pos=0) -> (out [B, T, d_model], new_state)`` (see models/base.py); ``init_state`` returns the
    empty state dict; ``pattern(x) -> [B, H, L, L]`` the (implicit) attention matrix for the
    normalised mixer input ``x``. Every mixer ends with ``hook_out``. The protocol members are
    listed in the module docstring; defaults here say "not applicable"."""

    HOOKS: ClassVar[tuple[HookSpec, ...]] = (HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),)
    BACKENDS: ClassVar[tuple[str, ...]] = ()  # kernel backends besides "auto"
    supports_state_taps: ClassVar[bool] = False
    state_key: ClassVar[str | None] = None  # the state entry hook_state reports (see tap_value)
    state_spec: ClassVar[StateSpec | None] = None
    decay_hooks: ClassVar[tuple[str, ...]] = ()
    memory_hook: ClassVar[str | None] = None  # units that carry memory (interpretable cells)
    whole_sequence_modes: ClassVar[tuple[str, ...]] = ("uniform",)  # ablations needing position 0
    is_softmax: ClassVar[bool] = False  # rows of pattern() are softmax distributions
    # reads SeqModel's left-padding mask (``self.padding``: pad keys masked, positions per row); a mixer
    # without it refuses left padding (right padding needs nothing: a causal mixer never reads later pads)
    handles_padding: ClassVar[bool] = False
    # hooks carrying what the recurrence writes into its state: zeroed at left-pad positions they keep
    # the zero initial state at zero through the pads, so a left-padded row computes what it would alone
    pad_write_hooks: ClassVar[tuple[str, ...]] = ()
    d_state: int | None = None  # state size per channel (Mamba's N); None where there is none
    lrp: ClassVar[LRPRules] = LRPRules()

    def __init__(self) -> None:
        super().__init__()
        self.tap_positions: Tensor | None = None  # set by SeqModel.tap_states
        self.backend = "auto"
        self.hook_out = HookPoint()

    # -- kernels ---------------------------------------------------------------------------
    def set_backend(self, backend: str) -> None:
        """Kernel backend of this mixer's sequence op: "auto" or one of ``BACKENDS``."""
        if backend != "auto" and backend not in self.BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {list(self.BACKENDS)} for "
                             f"{type(self).__name__}, got {backend!r}")
        self.backend = backend

    # -- state -------------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        raise NotImplementedError

    def tap_value(self, state: dict[str, Tensor]) -> Tensor:
        """What ``hook_state`` reports for one position, read off this mixer's state dict (tests
        compare taps with the step loop through it). Default: ``state[self.state_key]``."""
        return state[self.state_key]

    def state_view(self, layer_state: dict[str, Tensor], new: int, heads: int) -> Tensor:
        """``[B, H, G]``: the carried state split into the mixer's groups (``new``: tokens of the
        last chunk, used by KV caches)."""
        return StateSpec.head_view(layer_state[self.state_spec.key], heads)

    def check_tap_range(self, length: int, state: dict | None) -> None:
        """In a single forward pass (no state) a tap past the input's end would silently never
        fire: make it an error. Streams tap across chunks, so there it is allowed."""
        if state is None and self.tap_positions is not None and int(self.tap_positions[-1]) >= length:
            raise ValueError(f"positions: tap position {int(self.tap_positions[-1])} lies past the end of "
                             f"the {length}-token input (use stream() to tap across chunks)")

    def local_taps(self, pos: int, length: int) -> Tensor | None:
        """Tap positions falling in ``[pos, pos + length)``, shifted to chunk-local indices."""
        if self.tap_positions is None:
            return None
        p = self.tap_positions
        local = p[(p >= pos) & (p < pos + length)] - pos
        return local if local.numel() else None

    # -- analysis protocol -------------------------------------------------------------------
    @property
    def groups(self) -> Groups:  # pragma: no cover - abstract
        raise NotImplementedError

    def pattern(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        """``(hook name under the mixer, function)`` pairs that ablate ``site`` by ``mode``."""
        if mode == "uniform":
            raise NotApplicableError(f"ablate_heads: no uniform ablation for {type(self).__name__}")
        return [(self.groups.hook, site.constant_edit(mode))]

    def decay(self, seen: dict[str, Tensor]) -> Tensor | None:
        """Per-token decay ``[B, T, ...]`` (contiguous groups along dim 2) from the last values of
        ``decay_hooks``; None when the mixer has none."""
        return None

    def log_chunk_decay(self, seen: dict[str, Tensor]) -> Tensor:
        """log of a chunk's cumulative decay, broadcastable to ``state[state_spec.key]`` (float64);
        linear recurrences only."""
        raise NotApplicableError(f"state_window: {type(self).__name__} is not a linear recurrence")

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        """``forget_more``: hooks that raise the decay to the power ``c`` and scale the write by
        ``b_scale``."""
        raise NotApplicableError(f"forget_more: {type(self).__name__} (softmax attention) has no decay or state "
                                 "write to edit; not applicable")

    def gates(self) -> list[GateSpec]:
        """The gates in [0, 1] this mixer computes (empty: none)."""
        return []

    def gate_constants(self) -> list[float] | None:
        """Values of gates that are constants of the model (RetNet's γ), else None."""
        return None

    def ov_factors(self) -> OVFactors:
        raise NotApplicableError(f"ov_factors: no OV circuit defined for mixer {type(self).__name__}")

    def summary(self) -> dict[str, Any]:
        """The config fields that say what this mixer is (``seqlens info`` / the app's model page)."""
        cfg = self.cfg
        own = {k: v for k, v in asdict(cfg.mixer).items() if v is not None}  # the sub-config
        return dict(**own, positions=cfg.positions,
                    mlp="none" if cfg.attn_only else cfg.mlp, parallel_residual=cfg.parallel_residual)

    @classmethod
    def hook_specs(cls, cfg: Any) -> list[HookSpec]:
        """The :data:`HOOKS` that exist for ``cfg`` (conditions evaluated by :func:`hook_exists`)."""
        return [h for h in cls.HOOKS if hook_exists(h.when, cfg)]


def hook_exists(when: str, cfg: Any) -> bool:
    """Whether a :class:`HookSpec` condition holds for ``cfg`` (``"tap_states"`` counts as
    existing: the hook point exists, it fires only inside ``tap_states``)."""
    if not when or when == "tap_states":
        return True
    conds = {"rotary": cfg.positions == "rotary", "learned": cfg.positions == "learned",
             "gated_mlp": cfg.mlp == "gated", "qk_norm": getattr(cfg, "qk_norm", False),
             "sandwich_norms": getattr(cfg, "sandwich_norms", False)}
    if when in conds:
        return conds[when]
    return cfg.arch in when.split("|")


def channel_groups(n: int, width: int) -> Groups:
    return Groups(n, width, "channel")


def head_rows(weight: Tensor, heads: int) -> Tensor:
    """``[heads * r, d_model]`` input weight (``nn.Linear`` layout) -> ``W_V [heads, d_model, r]``."""
    return weight.reshape(heads, -1, weight.shape[1]).transpose(1, 2)


def head_columns(weight: Tensor, heads: int, gain: Tensor | None = None) -> Tensor:
    """``[d_model, heads * r]`` output weight (``nn.Linear`` layout) -> ``W_O [heads, r, d_model]``,
    each input column scaled by ``gain [heads * r]`` first."""
    if gain is not None:
        weight = weight * gain[None, :]
    d = weight.shape[0]
    return weight.reshape(d, heads, -1).permute(1, 2, 0)
