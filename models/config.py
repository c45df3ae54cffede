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

ARCHS = ("transformer", "fox", "mamba", "mamba2", "gla", "retnet", "mingru", "minlstm", "lstm")
RECURRENT_ARCHS = ("mamba", "mamba2", "gla", "retnet", "mingru", "minlstm", "lstm")
POSITIONS = ("learned", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
ACTS = ("gelu_new", "gelu", "silu", "relu")
MLPS = ("plain", "gated")


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

    Mamba-2: ``n_heads`` heads of ``ssd_head_dim = d_inner / n_heads`` channels, each with one
    scalar decay; ``n_bc_groups`` groups of heads sharing B and C; ``chunk_size`` of the CPU SSD
    scan; ``d_state``, ``d_conv``, ``expand``, ``conv_bias``, ``proj_bias`` as for Mamba.

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
    # --- added by mamba2 (Mamba-2 / SSD: n_heads heads of d_inner / n_heads channels; d_state,
    # d_conv, expand, conv_bias, proj_bias shared with Mamba)
    n_bc_groups: int = 1  # groups sharing B and C (HF n_groups); also the gated RMSNorm's groups
    chunk_size: int = 64  # positions per chunk of the CPU SSD scan (does not change results)
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
            if self.positions == "rotary" and self.rot_dim % 2:
                raise ValueError(f"ModelConfig.rotary_dim: expected an even number, got {self.rot_dim}")
            if self.rot_dim > self.head_dim:
                raise ValueError(f"ModelConfig.rotary_dim: {self.rot_dim} exceeds d_head={self.head_dim}")
        for name in ("d_key", "d_value", "d_hidden", "gate_low_rank", "norm_eps", "rotary_base",
                     "gate_normalizer", "n_bc_groups", "chunk_size"):
            _check_positive(name, getattr(self, name))
        if self.arch == "mamba" and self.d_inner % self.pattern_heads:
            raise ValueError(f"ModelConfig.pattern_heads: {self.pattern_heads} must divide "
                             f"d_inner={self.d_inner}")
        if self.arch == "mamba2":
            self._check_mamba2()
        if self.arch in ("gla", "retnet") and (self.key_dim % self.n_heads or self.value_dim % self.n_heads):
            raise ValueError(f"ModelConfig.n_heads: {self.n_heads} must divide d_key={self.key_dim} and "
                             f"d_value={self.value_dim}")
        if self.arch in ("mingru", "minlstm", "lstm") and self.hidden_dim % self.pattern_heads:
            raise ValueError(f"ModelConfig.pattern_heads: {self.pattern_heads} must divide "
                             f"d_hidden={self.hidden_dim}")

    def _check_mamba2(self) -> None:
        if self.d_inner % self.n_heads:
            raise ValueError(f"ModelConfig.n_heads: {self.n_heads} must divide d_inner={self.d_inner} "
                             "(Mamba-2 heads)")
        if self.n_heads % self.n_bc_groups:
            raise ValueError(f"ModelConfig.n_bc_groups: {self.n_bc_groups} must divide n_heads={self.n_heads}")

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
    def ssd_head_dim(self) -> int:
        """Mamba-2's per-head value width P = d_inner / n_heads."""
        return self.d_inner // self.n_heads

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
        return dataclasses.replace(self, **changes)
