"""`ModelConfig`: the hyper-parameters of one model, as shared fields plus a per-mixer sub-config.

Shared fields describe everything outside the sequence mixer (embedding, norms, MLP, sizes); the
``mixer`` field holds the mixer's own small config (:class:`AttentionConfig`, :class:`MambaConfig`,
:class:`Mamba2Config`, :class:`LinearAttentionConfig`, :class:`RecurrentConfig`; :data:`MIXER_CONFIGS` says which arch uses
which). Every sub-config has ``n_groups``, the protocol's group count (attention and GLA heads,
channel groups of a Mamba or recurrent state), so "heads" mean one thing everywhere.

The flat form still works: ``ModelConfig(arch="mamba", d_state=8, pattern_heads=4)`` splits its
keyword arguments, ``cfg.d_state`` reads through to the sub-config, ``cfg.replace(d_state=4)`` and
flat ``config.json`` files (the layout before the split) load. The config is saved beside every
checkpoint (``config.json``, key ``"seqlens"``) in the nested layout.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from seqlens.validate import ArgumentTypeError

ARCHS = ("transformer", "fox", "mamba", "mamba2", "gla", "retnet", "mingru", "minlstm", "lstm")
POSITIONS = ("learned", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
ACTS = ("gelu_new", "gelu", "silu", "relu")
MLPS = ("plain", "gated")
LAYER_TYPES = ("full_attention", "sliding_attention")


def _check_choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"ModelConfig.{name}: expected one of {list(options)}, got {value!r}")


def _check_positive(name: str, value: int | float | None) -> None:
    if value is not None and not value > 0:  # `not >` also refuses NaN
        kind = "integer" if isinstance(value, int) else "number"
        raise ValueError(f"ModelConfig.{name}: expected a positive {kind}, got {value!r}")


# ----------------------------------------------------------------------------- generic field types


def _type_text(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp is float:
        return "finite float"
    if typing.get_args(tp):  # e.g. tuple[float, float]
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has annotated type ``tp``, strictly: bool is not an int, an int or a bool
    is not a float unless the annotation says so, floats must be finite (NaN / inf are refused)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (dict, list):
        return isinstance(value, origin)
    return isinstance(value, origin or tp)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field_types(obj: Any, where: str | None = None) -> None:
    """Raise :class:`seqlens.validate.ArgumentTypeError` (a TypeError and a ValueError) naming
    ``Class.field`` when a field of the dataclass instance ``obj``
    does not match its annotation (see :func:`_matches`). Generic: works on any dataclass whose
    annotations ``typing.get_type_hints`` can resolve, so configs split into parts keep it."""
    hints = _type_hints(type(obj))
    where = where or type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in hints and not _matches(value, hints[f.name]):
            raise ArgumentTypeError(f"{where}.{f.name}: expected {_type_text(hints[f.name])}, got {value!r} "
                            f"({type(value).__name__})")


# ----------------------------------------------------------------------------- per-mixer configs


def _check_positive_fields(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:  # `not >` also refuses NaN
            kind = "integer" if isinstance(value, int) else "number"
            raise ValueError(f"{type(obj).__name__}.{name}: expected a positive {kind}, got {value!r}")


@dataclass(frozen=True)
class AttentionConfig:
    """Softmax / forgetting attention (``transformer``, ``fox``): ``n_heads`` (the groups),
    ``d_head`` (default ``d_model // n_heads``), ``n_kv_heads`` (grouped-query attention; default
    ``n_heads``), ``rotary_dim`` (partial rotary as in GPT-NeoX; default ``d_head``),
    ``rotary_base``, ``attn_bias`` (q, k, v), ``attn_out_bias``. Options of real checkpoints
    (models/hf.py): ``rope_scaling`` (transformers' RoPE parameters besides ``rope_theta``, e.g.
    ``{"rope_type": "llama3", "factor": 8.0, ...}``; None = plain RoPE; models/rope.py),
    ``sliding_window`` (keys a query reads on sliding layers, itself included), ``layer_types``
    (per layer ``"full_attention"`` / ``"sliding_attention"``; None: every layer slides when
    ``sliding_window`` is set), ``qk_norm`` (Qwen3: RMSNorm over d_head on queries and keys),
    ``attn_scale`` (logit scale; None = 1/sqrt(d_head); Gemma 2: query_pre_attn_scalar^-1/2),
    ``attn_softcap`` (Gemma 2: logits -> cap · tanh(logits / cap) before the mask)."""

    n_heads: int = 4
    d_head: int | None = None
    n_kv_heads: int | None = None
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    attn_bias: bool = False
    attn_out_bias: bool = False
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    sliding_window: int | None = None
    layer_types: list[str] | None = field(default=None, hash=False)
    qk_norm: bool = False
    attn_scale: float | None = None
    attn_softcap: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_positive_fields(self, ("n_heads", "d_head", "n_kv_heads", "rotary_dim", "rotary_base",
                                      "sliding_window", "attn_scale", "attn_softcap"))
        if self.layer_types is not None:
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise ValueError(f"AttentionConfig.layer_types: expected entries from {list(LAYER_TYPES)}, "
                                 f"got {bad}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("AttentionConfig.layer_types: sliding layers need sliding_window")
        if self.rope_scaling is not None:
            from .rope import check_rope_scaling  # the rope module knows its parameters
            check_rope_scaling(self.rope_scaling)

    @property
    def n_groups(self) -> int:
        return self.n_heads

    def symbols(self, d_model: int) -> dict[str, int]:
        """Values of the shape symbols this mixer's hook shapes use (see models/hookdoc.py)."""
        d_head = self.d_head if self.d_head is not None else d_model // self.n_heads
        return {"H": self.n_heads, "H_kv": self.n_kv_heads or self.n_heads, "d_head": d_head}


@dataclass(frozen=True)
class MambaConfig:
    """Mamba (selective SSM): ``d_state`` (N), ``d_conv``, ``expand`` (d_inner = expand * d_model),
    ``dt_rank`` (default ceil(d_model / 16)), ``conv_bias``, ``proj_bias``, ``n_groups`` (contiguous
    channel groups of d_inner that act as heads: implicit attention, ablation; must divide d_inner;
    ``pattern_heads`` in the flat layout)."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    conv_bias: bool = True
    proj_bias: bool = False
    n_groups: int = 8

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_positive_fields(self, ("d_state", "d_conv", "expand", "dt_rank", "n_groups"))

    def symbols(self, d_model: int) -> dict[str, int]:
        return {"H": self.n_groups, "D": self.expand * d_model, "N": self.d_state}


@dataclass(frozen=True)
class Mamba2Config:
    """Mamba-2 (state-space duality): ``n_heads`` heads (the groups) of ``d_inner / n_heads``
    channels, each with one scalar decay; ``n_bc_groups`` groups of heads sharing B and C (HF's
    ``n_groups``; also the gated RMSNorm's groups); ``chunk_size`` of the CPU SSD scan (does not
    change results); ``d_state``, ``d_conv``, ``expand``, ``conv_bias``, ``proj_bias`` as for Mamba."""

    n_heads: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    n_bc_groups: int = 1
    chunk_size: int = 64
    conv_bias: bool = True
    proj_bias: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_positive_fields(self, ("n_heads", "d_state", "d_conv", "expand", "n_bc_groups", "chunk_size"))
        if self.n_heads % self.n_bc_groups:
            raise ValueError(f"Mamba2Config.n_bc_groups: {self.n_bc_groups} must divide n_heads={self.n_heads}")

    @property
    def n_groups(self) -> int:
        return self.n_heads

    def symbols(self, d_model: int) -> dict[str, int]:
        d_inner = self.expand * d_model
        return {"H": self.n_heads, "D": d_inner, "N": self.d_state, "P": d_inner // self.n_heads,
                "G": self.n_bc_groups, "D_xbc": d_inner + 2 * self.n_bc_groups * self.d_state}


@dataclass(frozen=True)
class LinearAttentionConfig:
    """Gated linear attention / RetNet (``gla``, ``retnet``): ``n_heads`` (the groups), ``d_key`` /
    ``d_value`` (summed over heads; default d_model), ``gate_low_rank`` (rank of GLA's gate
    projection), ``gate_normalizer`` (GLA divides the gate logit by it)."""

    n_heads: int = 4
    d_key: int | None = None
    d_value: int | None = None
    gate_low_rank: int = 16
    gate_normalizer: float = 16.0

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_positive_fields(self, ("n_heads", "d_key", "d_value", "gate_low_rank", "gate_normalizer"))

    @property
    def n_groups(self) -> int:
        return self.n_heads

    def symbols(self, d_model: int) -> dict[str, int]:
        d_key, d_value = self.d_key or d_model, self.d_value or d_model
        return {"H": self.n_heads, "d_k": d_key // self.n_heads, "d_v": d_value // self.n_heads,
                "value_dim": d_value}


@dataclass(frozen=True)
class RecurrentConfig:
    """minGRU / minLSTM / LSTM: ``d_hidden`` (default d_model), ``n_groups`` (contiguous channel
    groups of the hidden state that act as heads; must divide d_hidden; ``pattern_heads`` in the
    flat layout), ``proj_bias`` (bias of the output projection)."""

    d_hidden: int | None = None
    n_groups: int = 8
    proj_bias: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_positive_fields(self, ("d_hidden", "n_groups"))

    def symbols(self, d_model: int) -> dict[str, int]:
        return {"H": self.n_groups, "D_h": self.d_hidden or d_model}


MixerConfig = AttentionConfig | MambaConfig | Mamba2Config | LinearAttentionConfig | RecurrentConfig

# arch -> the type of its ``mixer`` sub-config
MIXER_CONFIGS: dict[str, type] = {
    "transformer": AttentionConfig, "fox": AttentionConfig, "mamba": MambaConfig, "mamba2": Mamba2Config,
    "gla": LinearAttentionConfig, "retnet": LinearAttentionConfig,
    "mingru": RecurrentConfig, "minlstm": RecurrentConfig, "lstm": RecurrentConfig,
}

# flat names of the layout before the split -> the sub-config field they became
FLAT_ALIASES = {"pattern_heads": "n_groups"}

# every mixer field name of the flat layout. A flat config.json holds all of them, including the
# ones its arch does not use; as before the split, those are ignored (they never affected the model)
# and are not saved again. Any other name is an error.
_FLAT_NAMES: frozenset[str] = frozenset(
    {f.name for cls in (AttentionConfig, MambaConfig, Mamba2Config, LinearAttentionConfig, RecurrentConfig)
     for f in dataclasses.fields(cls)} | set(FLAT_ALIASES))


def _mixer_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _split_mixer_kwargs(arch: str, flat: dict[str, Any], base: Any) -> Any:
    """Build ``arch``'s mixer sub-config from flat keyword arguments on top of ``base`` (a
    sub-config, possibly of another arch's type: fields with the same name carry over)."""
    cls = MIXER_CONFIGS[arch]
    own = _mixer_fields(cls)
    values: dict[str, Any] = {}
    if base is not None:
        if not dataclasses.is_dataclass(base) or isinstance(base, type):
            raise ArgumentTypeError(f"ModelConfig.mixer: expected a {cls.__name__} or a JSON object of its "
                                    f"fields, got {type(base).__name__}")
        values = {k: v for k, v in dataclasses.asdict(base).items() if k in own}
    for name, value in flat.items():
        target = FLAT_ALIASES.get(name, name)
        if target in own:
            values[target] = value
        elif name not in _FLAT_NAMES:
            raise TypeError(f"ModelConfig: unknown field {name!r}")
    return cls(**values)


# ----------------------------------------------------------------------------- the model config


@dataclass(frozen=True, init=False)
class ModelConfig:
    """Hyper-parameters of one model: shared fields and the mixer's sub-config ``mixer``.

    Shared: ``arch`` (one of :data:`ARCHS`), ``vocab_size``, ``d_model``, ``n_layers``, ``n_ctx``
    (the context the model was trained on; a hard limit only with learned positions),
    ``norm``/``norm_eps``, ``tied_embeddings``, ``positions`` ("rotary" needs an attention mixer, or
    RetNet: its xPos rotation of q and k; "learned" adds embeddings to attention models only);
    MLP: ``mlp`` ("plain" = fc_out(act(fc_in x)), "gated" = SwiGLU-style fc_out(act(fc_gate x) *
    fc_in x)), ``d_mlp``, ``act``, ``mlp_bias``, ``attn_only`` (no MLP), ``parallel_residual``
    (GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)); ``meta`` (free-form provenance, not compared).

    ``mixer``: :class:`AttentionConfig`, :class:`MambaConfig`, :class:`Mamba2Config`,
    :class:`LinearAttentionConfig` or :class:`RecurrentConfig`, per :data:`MIXER_CONFIGS`. Its fields can be passed flat
    (``ModelConfig(arch="mamba", d_state=8)``) and read flat (``cfg.d_state``).
    """

    arch: str = "transformer"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_ctx: int = 256
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    tied_embeddings: bool = False
    positions: str = "learned"
    # mlp
    mlp: str = "plain"
    d_mlp: int | None = None
    act: str = "gelu_new"
    mlp_bias: bool = False
    attn_only: bool = False
    parallel_residual: bool = False
    # real checkpoints (models/hf.py): Gemma's norms multiply by (norm_offset + weight) and its token
    # embeddings by sqrt(d_model); Gemma 2 soft-caps the output logits and normalises the mixer's and
    # the MLP's outputs too (sandwich_norms)
    norm_offset: float = 0.0
    embed_scale: bool = False
    final_softcap: float | None = None
    sandwich_norms: bool = False
    mixer: Any = None
    # free-form provenance (e.g. {"source": "hf:gpt2"}); not used by the model
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __init__(self, arch: str = "transformer", *, mixer: Any = None, **kwargs: Any) -> None:
        shared = {f.name for f in dataclasses.fields(ModelConfig)} - {"arch", "mixer"}
        object.__setattr__(self, "arch", arch)
        for f in dataclasses.fields(ModelConfig):
            if f.name in shared:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                object.__setattr__(self, f.name, kwargs.pop(f.name, default))
        check_field_types(self._shared_view(), "ModelConfig")
        _check_choice("arch", arch, ARCHS)
        if isinstance(mixer, dict):  # the nested JSON layout
            cls = MIXER_CONFIGS[arch]
            unknown = sorted(set(mixer) - _mixer_fields(cls))
            if unknown:
                raise ValueError(f"ModelConfig.mixer: unknown fields {unknown} for arch {arch!r}; "
                                 f"{cls.__name__} has {sorted(_mixer_fields(cls))}")
            mixer = cls(**mixer)
        object.__setattr__(self, "mixer", _split_mixer_kwargs(arch, kwargs, mixer))
        self.__post_init__()

    def _shared_view(self) -> Any:
        """The shared fields as a dataclass instance, for the generic type check."""
        return _SharedFields(**{f.name: getattr(self, f.name) for f in dataclasses.fields(_SharedFields)})

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: read mixer fields flat (cfg.d_state)
        if name.startswith("__") or "mixer" not in self.__dict__:
            raise AttributeError(name)
        target = FLAT_ALIASES.get(name, name)
        if hasattr(self.__dict__["mixer"], target):
            return getattr(self.__dict__["mixer"], target)
        raise AttributeError(f"ModelConfig has no field {name!r} for arch {self.arch!r} (mixer config "
                             f"{type(self.__dict__['mixer']).__name__})")

    def __post_init__(self) -> None:
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("act", self.act, ACTS)
        _check_choice("mlp", self.mlp, MLPS)
        for name in ("vocab_size", "d_model", "n_layers", "n_ctx", "d_mlp", "norm_eps", "final_softcap"):
            _check_positive(name, getattr(self, name))
        if isinstance(self.mixer, AttentionConfig):
            self._check_attention()
        elif self.positions == "rotary" and self.arch != "retnet":  # RetNet: the paper's xPos rotation Θ
            raise ValueError(f"ModelConfig.positions: 'rotary' needs an attention mixer or arch 'retnet', "
                             f"not arch {self.arch!r}")
        elif self.positions == "rotary" and (self.key_dim // self.n_heads) % 2:
            raise ValueError(f"ModelConfig.positions: 'rotary' rotates pairs of key features; d_key per head "
                             f"{self.key_dim // self.n_heads} (d_key={self.key_dim}, n_heads={self.n_heads}) is odd")
        if isinstance(self.mixer, Mamba2Config) and self.d_inner % self.n_heads:
            raise ValueError(f"Mamba2Config.n_heads: {self.n_heads} must divide d_inner={self.d_inner}")
        if isinstance(self.mixer, MambaConfig) and self.d_inner % self.n_groups:
            raise ValueError(f"MambaConfig.n_groups: {self.n_groups} must divide d_inner={self.d_inner}")
        if isinstance(self.mixer, LinearAttentionConfig) and (self.key_dim % self.n_heads or
                                                               self.value_dim % self.n_heads):
            raise ValueError(f"LinearAttentionConfig.n_heads: {self.n_heads} must divide d_key={self.key_dim} "
                             f"and d_value={self.value_dim}")
        if isinstance(self.mixer, RecurrentConfig) and self.hidden_dim % self.n_groups:
            raise ValueError(f"RecurrentConfig.n_groups: {self.n_groups} must divide d_hidden={self.hidden_dim}")

    def _check_attention(self) -> None:
        if self.mixer.d_head is None and self.d_model % self.n_heads:
            raise ValueError(f"AttentionConfig.n_heads: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}; set d_head explicitly")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"AttentionConfig.n_kv_heads: {self.kv_heads} must divide n_heads={self.n_heads}")
        # an odd rotary_dim r rotates r + 1 features (ceil(r / 2) frequencies), as transformers does
        if self.rot_dim + self.rot_dim % 2 > self.head_dim:
            raise ValueError(f"AttentionConfig.rotary_dim: {self.rot_dim} exceeds d_head={self.head_dim} "
                             "(an odd rotary_dim rotates rotary_dim + 1 features)")
        types_ = self.mixer.layer_types
        if types_ is not None and len(types_) != self.n_layers:
            raise ValueError(f"AttentionConfig.layer_types: expected {self.n_layers} entries (n_layers), "
                             f"got {len(types_)}")

    def window(self, layer: int) -> int | None:
        """Sliding-window size of attention layer ``layer`` (None: full causal attention)."""
        types_ = self.mixer.layer_types
        if types_ is None or types_[layer] == "sliding_attention":
            return self.mixer.sliding_window
        return None

    # derived sizes -----------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        """The protocol's group count: attention / GLA heads, Mamba / recurrent channel groups."""
        return self.mixer.n_groups

    @property
    def head_dim(self) -> int:
        return self.mixer.d_head if self.mixer.d_head is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.mixer.n_kv_heads if self.mixer.n_kv_heads is not None else self.n_heads

    @property
    def rot_dim(self) -> int:
        return self.mixer.rotary_dim if self.mixer.rotary_dim is not None else self.head_dim

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def d_inner(self) -> int:
        return self.mixer.expand * self.d_model

    @property
    def ssd_head_dim(self) -> int:
        """Mamba-2's per-head value width P = d_inner / n_heads."""
        return self.d_inner // self.n_heads

    @property
    def dt_rank_(self) -> int:
        return self.mixer.dt_rank if self.mixer.dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def key_dim(self) -> int:
        return self.mixer.d_key if self.mixer.d_key is not None else self.d_model

    @property
    def value_dim(self) -> int:
        return self.mixer.d_value if self.mixer.d_value is not None else self.d_model

    @property
    def hidden_dim(self) -> int:
        return self.mixer.d_hidden if self.mixer.d_hidden is not None else self.d_model

    @property
    def is_recurrent(self) -> bool:
        """True when the mixer carries a fixed-size state (no context limit): every mixer but attention."""
        return not isinstance(self.mixer, AttentionConfig)

    # (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The nested layout: shared fields and ``"mixer": {...}``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Nested (``"mixer": {...}``) or flat (the layout before the split) dicts."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig: expected a JSON object of fields, got {type(d).__name__}")
        if "mixer" in d and not isinstance(d["mixer"], dict):
            raise ArgumentTypeError(f"ModelConfig.mixer: expected a JSON object of fields, got "
                                    f"{type(d['mixer']).__name__}")
        arch = d.get("arch", "transformer")
        if not isinstance(arch, str):
            raise ArgumentTypeError(f"ModelConfig.arch: expected str, got {arch!r} ({type(arch).__name__})")
        shared = {f.name for f in dataclasses.fields(cls)} - {"mixer"}
        mixer_names = _mixer_fields(MIXER_CONFIGS.get(arch, AttentionConfig))
        known = shared | set(_FLAT_NAMES) | {"mixer"}
        unknown = sorted(set(d) - known)
        unknown += sorted(f"mixer.{k}" for k in (d.get("mixer") or {}) if k not in mixer_names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}; shared fields are {sorted(shared)}, "
                             f"arch {arch!r}'s mixer fields are {sorted(mixer_names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes``; mixer fields may be given flat (``replace(d_state=4)``). A twin
        of another depth (sizing, header checks) repeats the layer pattern of ``layer_types``."""
        n, types_ = changes.get("n_layers"), getattr(self.mixer, "layer_types", None)
        if types_ and "layer_types" not in changes and "mixer" not in changes and isinstance(n, int) and n > 0:
            changes["layer_types"] = [types_[i % len(types_)] for i in range(n)]
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _SharedFields:
    """ModelConfig's shared fields, typed, for :func:`check_field_types` (ModelConfig builds
    itself by hand to accept flat mixer fields)."""

    arch: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_ctx: int
    norm: str
    norm_eps: float
    tied_embeddings: bool
    positions: str
    mlp: str
    d_mlp: int | None
    act: str
    mlp_bias: bool
    attn_only: bool
    parallel_residual: bool
    norm_offset: float
    embed_scale: bool
    final_softcap: float | None
    sandwich_norms: bool
    meta: dict[str, Any]
