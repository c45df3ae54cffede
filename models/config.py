"""`ModelConfig`: one frozen dataclass describing every architecture seqlens builds.

The config is saved beside every checkpoint (`config.json`, key ``"seqlens"``) so a model can be
rebuilt exactly. Fields that an architecture does not use keep their defaults and are ignored.
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

ARCHS = ("transformer", "fox", "mamba", "gla", "retnet", "mingru", "minlstm", "lstm")
RECURRENT_ARCHS = ("mamba", "gla", "retnet", "mingru", "minlstm", "lstm")
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


def check_field_types(obj: Any) -> None:
    """Raise :class:`seqlens.validate.ArgumentTypeError` (a TypeError and a ValueError) naming
    ``Class.field`` when a field of the dataclass instance ``obj``
    does not match its annotation (see :func:`_matches`). Generic: works on any dataclass whose
    annotations ``typing.get_type_hints`` can resolve, so configs split into parts keep it."""
    hints = _type_hints(type(obj))
    where = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in hints and not _matches(value, hints[f.name]):
            raise ArgumentTypeError(f"{where}.{f.name}: expected {_type_text(hints[f.name])}, got {value!r} "
                            f"({type(value).__name__})")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one model.

    Common: ``arch`` (one of :data:`ARCHS`), ``vocab_size``, ``d_model``, ``n_layers``, ``n_ctx``
    (the context the model was trained on; a hard limit only with learned positions),
    ``norm``/``norm_eps``, ``tied_embeddings``.

    Attention (``transformer``, ``fox``): ``n_heads``, ``d_head`` (default ``d_model // n_heads``),
    ``n_kv_heads`` (grouped-query attention; default ``n_heads``), ``positions``, ``rotary_dim``
    (partial rotary as in GPT-NeoX; default ``d_head``), ``rotary_base``, ``attn_bias``,
    ``attn_out_bias``; MLP: ``mlp`` ("plain" = fc_out(act(fc_in x)), "gated" = SwiGLU-style
    fc_out(act(fc_gate x) * fc_in x)), ``d_mlp``, ``act``, ``mlp_bias``, ``attn_only``,
    ``parallel_residual`` (GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)).

    Mamba: ``d_state`` (N), ``d_conv``, ``expand`` (d_inner = expand * d_model), ``dt_rank``
    (default ceil(d_model / 16)), ``conv_bias``, ``proj_bias``, ``pattern_heads`` (channel groups
    that :meth:`SeqModel.mixer_pattern` averages implicit attention over; must divide d_inner).

    GLA / RetNet: ``n_heads``, ``d_key`` / ``d_value`` (summed over heads; default d_model),
    ``gate_low_rank`` (rank of GLA's gate projection), ``gate_normalizer`` (GLA divides the gate
    logit by it). minGRU / minLSTM / LSTM: ``d_hidden`` (default d_model); ``pattern_heads``
    channel groups of the hidden state (must divide d_hidden).
    """

    arch: str = "transformer"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_ctx: int = 256
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    tied_embeddings: bool = False
    # attention
    n_heads: int = 4
    d_head: int | None = None
    n_kv_heads: int | None = None
    positions: str = "learned"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    attn_bias: bool = False
    attn_out_bias: bool = False
    # mlp
    mlp: str = "plain"
    d_mlp: int | None = None
    act: str = "gelu_new"
    mlp_bias: bool = False
    attn_only: bool = False
    parallel_residual: bool = False
    # mamba
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    conv_bias: bool = True
    proj_bias: bool = False
    pattern_heads: int = 8
    # gated linear attention / RetNet (n_heads heads; key and value widths summed over heads)
    d_key: int | None = None
    d_value: int | None = None
    gate_low_rank: int = 16
    gate_normalizer: float = 16.0
    # minGRU / minLSTM / LSTM
    d_hidden: int | None = None
    # --- added by hfload (issue 19: Hugging Face families); flat fields, the lead moves them at merge
    # attention: transformers' rope parameters besides rope_theta ({"rope_type": "llama3", "factor": 8, ...};
    # None = plain RoPE), see models/rope.py
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    sliding_window: int | None = None  # keys a query reads on sliding layers, itself included
    # per layer "full_attention" | "sliding_attention"; None: every layer slides when sliding_window is set
    layer_types: list[str] | None = field(default=None, hash=False)
    qk_norm: bool = False  # Qwen3: RMSNorm over d_head on queries and keys before rotary
    norm_offset: float = 0.0  # Gemma: norms multiply by (norm_offset + weight)
    embed_scale: bool = False  # Gemma: token embeddings times sqrt(d_model)
    attn_scale: float | None = None  # logit scale; None = 1/sqrt(d_head) (Gemma 2: query_pre_attn_scalar^-1/2)
    attn_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap) before the mask
    final_softcap: float | None = None  # Gemma 2: the same on the output logits
    sandwich_norms: bool = False  # Gemma 2: norms on the mixer's and the MLP's outputs too
    # --- end of hfload fields
    # free-form provenance (e.g. {"source": "hf:gpt2"}); not used by the model
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_field_types(self)
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("act", self.act, ACTS)
        _check_choice("mlp", self.mlp, MLPS)
        for name in ("vocab_size", "d_model", "n_layers", "n_ctx", "n_heads", "d_head",
                     "n_kv_heads", "d_mlp", "d_state", "d_conv", "expand", "dt_rank",
                     "pattern_heads", "rotary_dim"):
            _check_positive(name, getattr(self, name))
        if self.arch in ("transformer", "fox"):
            if self.d_head is None and self.d_model % self.n_heads:
                raise ValueError(
                    f"ModelConfig.n_heads: d_model={self.d_model} is not divisible by "
                    f"n_heads={self.n_heads}; set d_head explicitly")
            if self.n_heads % self.kv_heads:
                raise ValueError(f"ModelConfig.n_kv_heads: {self.kv_heads} must divide "
                                 f"n_heads={self.n_heads}")
            # an odd rotary_dim r rotates r + 1 features (ceil(r / 2) frequencies), as transformers does
            if self.rot_dim + self.rot_dim % 2 > self.head_dim:
                raise ValueError(f"ModelConfig.rotary_dim: {self.rot_dim} exceeds d_head={self.head_dim} "
                                 "(an odd rotary_dim rotates rotary_dim + 1 features)")
        for name in ("d_key", "d_value", "d_hidden", "gate_low_rank", "norm_eps", "rotary_base",
                     "gate_normalizer"):
            _check_positive(name, getattr(self, name))
        self._check_hf_fields()
        if self.arch == "mamba" and self.d_inner % self.pattern_heads:
            raise ValueError(f"ModelConfig.pattern_heads: {self.pattern_heads} must divide "
                             f"d_inner={self.d_inner}")
        if self.arch in ("gla", "retnet") and (self.key_dim % self.n_heads or self.value_dim % self.n_heads):
            raise ValueError(f"ModelConfig.n_heads: {self.n_heads} must divide d_key={self.key_dim} and "
                             f"d_value={self.value_dim}")
        if self.arch in ("mingru", "minlstm", "lstm") and self.hidden_dim % self.pattern_heads:
            raise ValueError(f"ModelConfig.pattern_heads: {self.pattern_heads} must divide "
                             f"d_hidden={self.hidden_dim}")

    def _check_hf_fields(self) -> None:
        """The hfload block: positive sizes, one known type per layer, a known rope type."""
        for name in ("sliding_window", "attn_scale", "attn_softcap", "final_softcap"):
            _check_positive(name, getattr(self, name))
        if self.layer_types is not None:
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad or len(self.layer_types) != self.n_layers:
                raise ValueError(f"ModelConfig.layer_types: expected {self.n_layers} entries from "
                                 f"{list(LAYER_TYPES)}, got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("ModelConfig.layer_types: sliding layers need sliding_window")
        if self.rope_scaling is not None:
            from .rope import check_rope_scaling  # the rope module knows its parameters
            check_rope_scaling(self.rope_scaling)

    def window(self, layer: int) -> int | None:
        """Sliding-window size of layer ``layer`` (None: full causal attention)."""
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    # derived sizes -----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def rot_dim(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.head_dim

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def key_dim(self) -> int:
        return self.d_key if self.d_key is not None else self.d_model

    @property
    def value_dim(self) -> int:
        return self.d_value if self.d_value is not None else self.d_model

    @property
    def hidden_dim(self) -> int:
        return self.d_hidden if self.d_hidden is not None else self.d_model

    @property
    def is_recurrent(self) -> bool:
        """True when the mixer carries a fixed-size state (no context limit)."""
        return self.arch in RECURRENT_ARCHS

    # (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig: expected a JSON object of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "ModelConfig":
        n = changes.get("n_layers")
        if self.layer_types and "layer_types" not in changes and isinstance(n, int) and n > 0:
            # hfload: a twin with another depth (sizing, header checks) repeats the layer pattern
            changes["layer_types"] = [self.layer_types[i % len(self.layer_types)] for i in range(n)]
        return dataclasses.replace(self, **changes)
