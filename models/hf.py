"""Convert Hugging Face checkpoints into seqlens models, with no network and no pickle.

``from_hf(path_or_model)`` accepts either

* a local checkpoint directory: ``config.json`` and the weights are read directly (one
  ``model.safetensors`` or shards listed in ``model.safetensors.index.json``); ``transformers`` is
  not imported and no Hugging Face model is instantiated;
* an already loaded ``transformers`` model: its ``.config`` and ``.state_dict()`` are used.

Supported ``model_type`` values and how they map onto :class:`~seqlens.models.config.ModelConfig`:

=============  ==================================================================================
``gpt2``       learned positions, LayerNorm, biases everywhere, tied embeddings. Conv1D weights
               are stored ``[in, out]`` and are transposed; the fused ``c_attn`` is ``[q; k; v]``.
``gpt_neox``   Pythia: partial rotary (``rotary_dim = d_head * partial_rotary_factor``), parallel
               residual, LayerNorm; the fused ``query_key_value`` is laid out per head
               ``[H, 3, d_head]`` along its output dimension.
``llama``      RMSNorm, rotary, grouped-query attention, SwiGLU MLP (``gate_proj -> fc_gate``,
               ``up_proj -> fc_in``, ``down_proj -> fc_out``).
``mistral``    Llama without biases; accepted only without sliding-window attention.
``mamba``      Mamba-1: parameter names are ours already (``blocks.{l}.mixer.*``).
``mamba2``     Mamba-2 (SSD): transformers' parameter names (``in_proj conv1d dt_bias A_log D norm
               out_proj``); only the default ``time_step_limit`` (no clamp of Δ).
=============  ==================================================================================

Every Hugging Face weight is checked against the shape that ``config.json`` implies before it is
renamed, split or transposed, so an edited config gives an error naming the weight and both shapes.
Only plain RoPE is implemented: RoPE scaling variants raise ``NotImplementedError``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .config import ModelConfig
from .checkpoint import CheckpointError, load_safetensors, load_state_into, read_config
from .registry import model_class

ARG = "path_or_model"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MAMBA_N_CTX = 2048  # recurrent: no hard limit; only recorded as the nominal context

# Hugging Face activation names (transformers' ACT2FN keys) -> ours (ModelConfig.act)
HF_ACTS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# buffers that old checkpoints saved beside the parameters (causal masks, rotary tables)
IGNORED_BUFFERS = re.compile(r"(^|\.)(attn|attention)\.(bias|masked_bias)$|(^|\.)rotary_emb\.inv_freq$")


def from_hf(path_or_model: str | os.PathLike | Any, dtype: torch.dtype = torch.float32) -> SeqModel:
    """Convert a Hugging Face GPT-2, GPT-NeoX (Pythia), Llama / Mistral or Mamba checkpoint into
    our implementation, returned in eval mode with parameters in ``dtype``.

    ``path_or_model`` is a local checkpoint directory (``config.json`` + safetensors, possibly
    sharded) or a loaded ``transformers`` ``PreTrainedModel``. Raises ``FileNotFoundError`` (no
    such directory), :class:`~seqlens.models.checkpoint.CheckpointError` (missing config or weights,
    pickle-only or corrupt weights, shapes that disagree with the config) and
    ``NotImplementedError`` (a model type or variant we do not implement).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    ckpt = _open(path_or_model)
    model_type = _model_type(ckpt.config, ckpt.label)
    family = FAMILIES[model_type]
    cfg = family.config(ckpt.config, ckpt.label)
    cfg = cfg.replace(meta={"source": "hf", "model_type": model_type, "path": ckpt.path})
    weights = Weights(ckpt.read_tensors(), family.prefix, ckpt.label)
    state = family.weights(weights, cfg)
    weights.check_consumed()
    return load_state_into(empty_model(cfg, dtype), state, ckpt.label)


def empty_model(cfg: ModelConfig, dtype: torch.dtype) -> SeqModel:
    """Our model for ``cfg`` with uninitialised parameters in ``dtype``, on the CPU.

    It is built on the meta device, so no time or memory goes into a random initialisation that
    the checkpoint overwrites; every parameter must then be loaded (``load_state_into`` checks)."""
    with torch.device("meta"):
        model = model_class(cfg.arch)(cfg)
    model = model.to(dtype).to_empty(device="cpu")
    if cfg.tied_embeddings:  # to_empty gives each parameter its own storage: tie again
        model.unembed.weight = model.embed.weight
    return model.eval()


# ----------------------------------------------------------------------------- reading


class Checkpoint(NamedTuple):
    """A Hugging Face checkpoint opened for conversion: its config dict, a label for messages,
    the path recorded in ``cfg.meta`` and a function reading its tensors (called only once the
    config is known to be supported, so unsupported models cost no weight reading)."""

    config: dict[str, Any]
    label: str
    path: str | None
    read_tensors: Callable[[], dict[str, Tensor]]


def _open(path_or_model: Any) -> Checkpoint:
    """Open a checkpoint directory or a loaded ``transformers`` model."""
    if isinstance(path_or_model, (str, os.PathLike)):
        directory = Path(path_or_model)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{ARG}: {directory} is not a directory; expected a local Hugging Face checkpoint "
                f"directory ({CONFIG_FILE} + safetensors) or a loaded transformers model")
        if not (directory / CONFIG_FILE).is_file():
            raise CheckpointError(f"{ARG}: {directory} has no {CONFIG_FILE}; expected a Hugging Face "
                                  "checkpoint directory")
        return Checkpoint(read_config(directory), str(directory), str(directory),
                          lambda: read_weights(directory))
    if hasattr(path_or_model, "config") and callable(getattr(path_or_model, "state_dict", None)):
        return _open_model(path_or_model)
    raise TypeError(f"{ARG}: expected a checkpoint directory (str or os.PathLike) or a loaded "
                    f"transformers model, got {type(path_or_model).__name__}")


def _open_model(model: Any) -> Checkpoint:
    """A loaded ``transformers`` model: its config as a dict and its state dict."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    name = config.get("_name_or_path") or None
    label = type(model).__name__ + (f" ({name})" if name else "")

    def read_tensors() -> dict[str, Tensor]:
        return {k: v.detach() for k, v in model.state_dict().items()}

    return Checkpoint(config, label, name, read_tensors)


def read_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory: ``model.safetensors`` or the shards listed in
    ``model.safetensors.index.json``. Pickled ``.bin`` weights are refused, never loaded."""
    if (directory / WEIGHTS_FILE).is_file():
        return load_safetensors(directory / WEIGHTS_FILE)
    if (directory / INDEX_FILE).is_file():
        return _read_shards(directory)
    pickled = [name for name in PICKLE_FILES if (directory / name).is_file()]
    if pickled:
        raise CheckpointError(
            f"{ARG}: {directory} has no safetensors weights, only {pickled[0]}; seqlens never unpickles "
            ".bin files: convert with save_pretrained(..., safe_serialization=True)")
    raise CheckpointError(f"{ARG}: {directory} has no weights; expected {WEIGHTS_FILE} or {INDEX_FILE}")


def _read_shards(directory: Path) -> dict[str, Tensor]:
    """Merge the safetensors shards named in the index's ``weight_map``."""
    index_path = directory / INDEX_FILE
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ARG}: {index_path} is not a valid safetensors index ({e!r})") from None
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = directory / shard
        if Path(shard).name != shard or not path.is_file():
            raise CheckpointError(
                f"{ARG}: shard {shard!r} listed in {index_path} is not a file in {directory}")
        tensors.update(load_safetensors(path))
    return tensors


class Weights:
    """The checkpoint's tensors by name, with the family's base-model prefix (``transformer.``,
    ``gpt_neox.``, ``model.``, ``backbone.``) removed where present, since checkpoints saved from
    the bare base model lack it. ``take`` hands out each tensor once after checking its shape;
    ``check_consumed`` then refuses any weight nobody took."""

    def __init__(self, tensors: dict[str, Tensor], prefix: str, label: str):
        self.label = label
        self.tensors: dict[str, Tensor] = {}
        self.full_names: dict[str, str] = {}
        for name, tensor in tensors.items():
            short = name.removeprefix(prefix)
            self.tensors[short] = tensor
            self.full_names[short] = name

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """Remove and return weight ``name``, requiring the ``shape`` the config implies."""
        if name not in self.tensors:
            raise CheckpointError(f"{ARG}: {self.label}: missing weight {name!r} (the checkpoint is "
                                  "incomplete or does not match its config.json)")
        tensor = self.tensors.pop(name)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{ARG}: {self.label}: weight {self.full_names[name]!r} has shape {list(tensor.shape)} "
                f"but config.json implies {list(shape)}")
        return tensor

    def check_consumed(self) -> None:
        """Raise if weights remain that the conversion did not use (saved buffers excepted)."""
        left = [self.full_names[k] for k in self.tensors if not IGNORED_BUFFERS.search(k)]
        if left:
            raise CheckpointError(f"{ARG}: {self.label}: unexpected weights {left[:8]}"
                                  f"{' ...' if len(left) > 8 else ''} that config.json does not explain")


# ----------------------------------------------------------------------------- config helpers


def _model_type(hf: dict[str, Any], label: str) -> str:
    model_type = hf.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE}'s 'model_type' must be a string, got {model_type!r}")
    if not model_type:
        raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE} has no 'model_type'; expected a Hugging "
                              "Face model config")
    if model_type not in FAMILIES:
        raise NotImplementedError(
            f"{ARG}: {label}: model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)} "
            "(other architectures can go through TransformerLens' TransformerBridge)")
    return model_type


def _required(hf: dict[str, Any], key: str, label: str) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE} lacks {key!r}")
    return hf[key]


def _act(hf: dict[str, Any], key: str, default: str, label: str) -> str:
    name = hf.get(key) or default
    if name not in HF_ACTS:
        raise NotImplementedError(f"{ARG}: {label}: activation {key}={name!r} is not supported; "
                                  f"supported: {sorted(HF_ACTS)}")
    return HF_ACTS[name]


def _rope(hf: dict[str, Any], legacy_theta_key: str, label: str) -> dict[str, Any]:
    """RoPE parameters from a v5 config (``rope_parameters``) or a v4 one (``rope_theta`` /
    ``rotary_emb_base`` and ``rope_scaling``), with ``rope_theta`` always set. Only plain RoPE
    (``rope_type == "default"``) is implemented."""
    for key in ("rope_scaling", "rope_parameters"):
        if not isinstance(hf.get(key) or {}, dict):
            raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE}'s {key!r} must be an object, got {hf[key]!r}")
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise NotImplementedError(f"{ARG}: {label}: RoPE type {kind!r} (rope scaling) is not implemented; "
                                  "seqlens supports plain RoPE (rope_type 'default') only")
    params.setdefault("rope_theta", hf.get(legacy_theta_key, 10000.0))
    return params


def _make_config(label: str, **fields: Any) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except (ValueError, TypeError) as e:  # TypeError: a field of the wrong JSON type
        raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE} does not describe a valid model: {e}") from None


# ----------------------------------------------------------------------------- weight helpers


def _linear(w: Weights, src: str, dst: str, n_out: int, n_in: int, bias: bool,
            conv1d: bool = False) -> dict[str, Tensor]:
    """HF linear ``src`` -> our ``dst.weight`` ``[n_out, n_in]`` (and ``dst.bias``). GPT-2's
    ``Conv1D`` stores the weight transposed, ``[n_in, n_out]``."""
    weight = w.take(f"{src}.weight", (n_in, n_out) if conv1d else (n_out, n_in))
    out = {f"{dst}.weight": weight.t() if conv1d else weight}
    if bias:
        out[f"{dst}.bias"] = w.take(f"{src}.bias", (n_out,))
    return out


def _norm(w: Weights, src: str, dst: str, d: int, bias: bool) -> dict[str, Tensor]:
    out = {f"{dst}.weight": w.take(f"{src}.weight", (d,))}
    if bias:
        out[f"{dst}.bias"] = w.take(f"{src}.bias", (d,))
    return out


def _split_qkv(t: Tensor, n_heads: int, per_head: bool) -> tuple[Tensor, ...]:
    """Split a fused qkv weight ``[3 H dh, d]`` or bias ``[3 H dh]`` along dim 0 into q, k, v.
    GPT-2 stacks ``[q; k; v]``; GPT-NeoX interleaves per head, ``[H, 3, dh]``."""
    if not per_head:
        return t.chunk(3, dim=0)
    rest = t.shape[1:]
    grouped = t.reshape(n_heads, 3, -1, *rest)
    return tuple(grouped[:, i].reshape(-1, *rest) for i in range(3))


def _fused_qkv(w: Weights, src: str, dst: str, cfg: ModelConfig, conv1d: bool,
               per_head: bool) -> dict[str, Tensor]:
    """A fused qkv projection ``src`` -> our ``dst.q``, ``dst.k``, ``dst.v``."""
    d = cfg.d_model
    fused = _linear(w, src, "qkv", 3 * d, d, cfg.attn_bias, conv1d=conv1d)
    out = {}
    for key, tensor in fused.items():  # "qkv.weight", "qkv.bias"
        kind = key.split(".")[1]
        for name, part in zip("qkv", _split_qkv(tensor, cfg.n_heads, per_head)):
            out[f"{dst}.{name}.{kind}"] = part
    return out


def _head(w: Weights, names: tuple[str, ...], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our ``unembed.weight`` from the first of ``names`` present. Tied models reuse the embedding
    (as transformers does), so their head may be absent and a stored copy is only shape-checked."""
    shape = (cfg.vocab_size, cfg.d_model)
    for name in names:
        if w.has(name):
            head = w.take(name, shape)
            return {} if cfg.tied_embeddings else {"unembed.weight": head}
    if cfg.tied_embeddings:
        return {}
    return {"unembed.weight": w.take(names[0], shape)}  # raises: missing weight


# ----------------------------------------------------------------------------- GPT-2


def _gpt2_config(hf: dict[str, Any], label: str) -> ModelConfig:
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise NotImplementedError(f"{ARG}: {label}: GPT-2 attention scaling variants (scale_attn_weights="
                                  "false or scale_attn_by_inverse_layer_idx=true) are not implemented")
    d = _required(hf, "n_embd", label)
    return _make_config(
        label, arch="transformer", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "n_layer", label), n_heads=_required(hf, "n_head", label),
        n_ctx=_required(hf, "n_positions", label), positions="learned", norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tied_embeddings=hf.get("tie_word_embeddings", True),
        attn_bias=True, attn_out_bias=True, mlp="plain", d_mlp=hf.get("n_inner") or 4 * d,
        act=_act(hf, "activation_function", "gelu_new", label), mlp_bias=True)


def _gpt2_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst, d, m = f"h.{layer}", f"blocks.{layer}", cfg.d_model, cfg.mlp_dim
    return {
        **_norm(w, f"{src}.ln_1", f"{dst}.ln1", d, bias=True),
        **_fused_qkv(w, f"{src}.attn.c_attn", f"{dst}.mixer", cfg, conv1d=True, per_head=False),
        **_linear(w, f"{src}.attn.c_proj", f"{dst}.mixer.o", d, d, bias=True, conv1d=True),
        **_norm(w, f"{src}.ln_2", f"{dst}.ln2", d, bias=True),
        **_linear(w, f"{src}.mlp.c_fc", f"{dst}.mlp.fc_in", m, d, bias=True, conv1d=True),
        **_linear(w, f"{src}.mlp.c_proj", f"{dst}.mlp.fc_out", d, m, bias=True, conv1d=True),
    }


def _gpt2_weights(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    state = {
        "embed.weight": w.take("wte.weight", (cfg.vocab_size, cfg.d_model)),
        "pos_embed.weight": w.take("wpe.weight", (cfg.n_ctx, cfg.d_model)),
        **_norm(w, "ln_f", "ln_final", cfg.d_model, bias=True),
        **_head(w, ("lm_head.weight",), cfg),
    }
    for layer in range(cfg.n_layers):
        state.update(_gpt2_layer(w, layer, cfg))
    return state


# ----------------------------------------------------------------------------- GPT-NeoX (Pythia)


def _neox_config(hf: dict[str, Any], label: str) -> ModelConfig:
    d, n_heads = _required(hf, "hidden_size", label), _required(hf, "num_attention_heads", label)
    rope = _rope(hf, "rotary_emb_base", label)
    factor = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = hf.get("attention_bias", True)
    return _make_config(
        label, arch="transformer", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "num_hidden_layers", label), n_heads=n_heads,
        n_ctx=hf.get("max_position_embeddings", 2048), positions="rotary",
        rotary_dim=int(d // n_heads * factor), rotary_base=float(rope["rope_theta"]), norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5), tied_embeddings=hf.get("tie_word_embeddings", False),
        attn_bias=bias, attn_out_bias=bias, mlp="plain", d_mlp=_required(hf, "intermediate_size", label),
        act=_act(hf, "hidden_act", "gelu", label), mlp_bias=True,
        parallel_residual=hf.get("use_parallel_residual", True))


def _neox_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst, d, m = f"layers.{layer}", f"blocks.{layer}", cfg.d_model, cfg.mlp_dim
    return {
        **_norm(w, f"{src}.input_layernorm", f"{dst}.ln1", d, bias=True),
        **_fused_qkv(w, f"{src}.attention.query_key_value", f"{dst}.mixer", cfg, conv1d=False, per_head=True),
        **_linear(w, f"{src}.attention.dense", f"{dst}.mixer.o", d, d, bias=cfg.attn_out_bias),
        **_norm(w, f"{src}.post_attention_layernorm", f"{dst}.ln2", d, bias=True),
        **_linear(w, f"{src}.mlp.dense_h_to_4h", f"{dst}.mlp.fc_in", m, d, bias=True),
        **_linear(w, f"{src}.mlp.dense_4h_to_h", f"{dst}.mlp.fc_out", d, m, bias=True),
    }


def _neox_weights(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    state = {
        "embed.weight": w.take("embed_in.weight", (cfg.vocab_size, cfg.d_model)),
        **_norm(w, "final_layer_norm", "ln_final", cfg.d_model, bias=True),
        # checkpoints name the head embed_out; transformers v5 renames it lm_head in memory
        **_head(w, ("embed_out.weight", "lm_head.weight"), cfg),
    }
    for layer in range(cfg.n_layers):
        state.update(_neox_layer(w, layer, cfg))
    return state


# ----------------------------------------------------------------------------- Llama / Mistral


def _llama_config(hf: dict[str, Any], label: str) -> ModelConfig:
    mistral = hf.get("model_type") == "mistral"
    window = hf.get("sliding_window", 4096 if mistral else None)
    if mistral and window is not None:
        raise NotImplementedError(f"{ARG}: {label}: Mistral sliding-window attention (sliding_window="
                                  f"{window}) is not implemented; only sliding_window=null converts")
    d, n_heads = _required(hf, "hidden_size", label), _required(hf, "num_attention_heads", label)
    return _make_config(
        label, arch="transformer", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "num_hidden_layers", label), n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or (8 if mistral else n_heads),
        d_head=hf.get("head_dim") or d // n_heads, n_ctx=hf.get("max_position_embeddings", 2048),
        positions="rotary", rotary_base=float(_rope(hf, "rope_theta", label)["rope_theta"]),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        tied_embeddings=hf.get("tie_word_embeddings", False),
        attn_bias=hf.get("attention_bias", False), attn_out_bias=hf.get("attention_bias", False),
        mlp="gated", d_mlp=_required(hf, "intermediate_size", label),
        act=_act(hf, "hidden_act", "silu", label), mlp_bias=hf.get("mlp_bias", False))


def _llama_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst, d, m = f"layers.{layer}", f"blocks.{layer}", cfg.d_model, cfg.mlp_dim
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attn, mlp = f"{src}.self_attn", f"{src}.mlp"
    return {
        **_norm(w, f"{src}.input_layernorm", f"{dst}.ln1", d, bias=False),
        **_linear(w, f"{attn}.q_proj", f"{dst}.mixer.q", q_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.k_proj", f"{dst}.mixer.k", kv_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.v_proj", f"{dst}.mixer.v", kv_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.o_proj", f"{dst}.mixer.o", d, q_dim, bias=cfg.attn_out_bias),
        **_norm(w, f"{src}.post_attention_layernorm", f"{dst}.ln2", d, bias=False),
        **_linear(w, f"{mlp}.gate_proj", f"{dst}.mlp.fc_gate", m, d, bias=cfg.mlp_bias),
        **_linear(w, f"{mlp}.up_proj", f"{dst}.mlp.fc_in", m, d, bias=cfg.mlp_bias),
        **_linear(w, f"{mlp}.down_proj", f"{dst}.mlp.fc_out", d, m, bias=cfg.mlp_bias),
    }


def _llama_weights(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    state = {
        "embed.weight": w.take("embed_tokens.weight", (cfg.vocab_size, cfg.d_model)),
        **_norm(w, "norm", "ln_final", cfg.d_model, bias=False),
        **_head(w, ("lm_head.weight",), cfg),
    }
    for layer in range(cfg.n_layers):
        state.update(_llama_layer(w, layer, cfg))
    return state


# ----------------------------------------------------------------------------- Mamba


def _channel_groups(d_inner: int) -> int:
    """Channel groups for implicit-attention patterns: the largest of 8, 4, 2, 1 dividing d_inner."""
    return next(h for h in (8, 4, 2, 1) if d_inner % h == 0)


def _mamba_config(hf: dict[str, Any], label: str) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"{ARG}: {label}: Mamba with hidden_act={hf['hidden_act']!r} is not "
                                  "implemented; only 'silu'")
    d = _required(hf, "hidden_size", label)
    d_inner = hf.get("intermediate_size") or int(hf.get("expand", 2) * d)
    if d_inner % d:
        raise NotImplementedError(f"{ARG}: {label}: intermediate_size={d_inner} is not a multiple of "
                                  f"hidden_size={d}; seqlens' Mamba needs an integer expand")
    rank = hf.get("time_step_rank", "auto")
    return _make_config(
        label, arch="mamba", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "num_hidden_layers", label), n_ctx=MAMBA_N_CTX, norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tied_embeddings=hf.get("tie_word_embeddings", True),
        d_state=hf.get("state_size", 16), d_conv=hf.get("conv_kernel", 4), expand=d_inner // d,
        dt_rank=math.ceil(d / 16) if rank == "auto" else int(rank),
        conv_bias=hf.get("use_conv_bias", True), proj_bias=hf.get("use_bias", False),
        n_groups=_channel_groups(d_inner))


def _mamba_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst = f"layers.{layer}", f"blocks.{layer}"
    d, inner, n, rank = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_
    state = {
        **_norm(w, f"{src}.norm", f"{dst}.ln1", d, bias=False),
        **_linear(w, f"{src}.mixer.in_proj", f"{dst}.mixer.in_proj", 2 * inner, d, bias=cfg.proj_bias),
        f"{dst}.mixer.conv1d.weight": w.take(f"{src}.mixer.conv1d.weight", (inner, 1, cfg.d_conv)),
        **_linear(w, f"{src}.mixer.x_proj", f"{dst}.mixer.x_proj", rank + 2 * n, inner, bias=False),
        **_linear(w, f"{src}.mixer.dt_proj", f"{dst}.mixer.dt_proj", inner, rank, bias=True),
        f"{dst}.mixer.A_log": w.take(f"{src}.mixer.A_log", (inner, n)),
        f"{dst}.mixer.D": w.take(f"{src}.mixer.D", (inner,)),
        **_linear(w, f"{src}.mixer.out_proj", f"{dst}.mixer.out_proj", d, inner, bias=cfg.proj_bias),
    }
    if cfg.conv_bias:
        state[f"{dst}.mixer.conv1d.bias"] = w.take(f"{src}.mixer.conv1d.bias", (inner,))
    return state


def _mamba_weights(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    # the original state-spaces checkpoints spell the embedding "embedding" (transformers renames it)
    embed = "embedding.weight" if w.has("embedding.weight") else "embeddings.weight"
    state = {
        "embed.weight": w.take(embed, (cfg.vocab_size, cfg.d_model)),
        **_norm(w, "norm_f", "ln_final", cfg.d_model, bias=False),
        **_head(w, ("lm_head.weight",), cfg),
    }
    for layer in range(cfg.n_layers):
        state.update(_mamba_layer(w, layer, cfg))
    return state


# ----------------------------------------------------------------------------- Mamba-2


def _mamba2_config(hf: dict[str, Any], label: str) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"{ARG}: {label}: Mamba-2 with hidden_act={hf['hidden_act']!r} is not "
                                  "implemented; only 'silu'")
    limit = [_json_float(v, "time_step_limit", label) for v in hf.get("time_step_limit") or (0.0, math.inf)]
    if len(limit) != 2 or limit[0] > 0.0 or math.isfinite(limit[1]):
        raise NotImplementedError(f"{ARG}: {label}: Mamba-2 with time_step_limit={list(limit)} is not "
                                  "implemented; only the default (0, inf) (no clamp of Δ)")
    d = _required(hf, "hidden_size", label)
    expand = hf.get("expand", 2)
    if not float(expand).is_integer():
        raise NotImplementedError(f"{ARG}: {label}: Mamba-2 expand={expand} is not an integer")
    return _make_config(
        label, arch="mamba2", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "num_hidden_layers", label), n_ctx=MAMBA_N_CTX, norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tied_embeddings=hf.get("tie_word_embeddings", False),
        d_state=hf.get("state_size", 128), d_conv=hf.get("conv_kernel", 4), expand=int(expand),
        n_heads=_required(hf, "num_heads", label), n_bc_groups=hf.get("n_groups", 1),
        conv_bias=hf.get("use_conv_bias", True), proj_bias=hf.get("use_bias", False))


def _json_float(value: Any, key: str, label: str) -> float:
    """A float from config.json, where transformers writes infinities as ``{"__float__":
    "Infinity"}`` (JSON has no inf)."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        value = value["__float__"]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE}'s {key!r} holds {value!r}, not a number") from None


def _mamba2_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst = f"layers.{layer}", f"blocks.{layer}.mixer"
    d, inner, H = cfg.d_model, cfg.d_inner, cfg.n_heads
    conv_dim = inner + 2 * cfg.n_bc_groups * cfg.d_state
    m = f"{src}.mixer"
    state = {
        **_norm(w, f"{src}.norm", f"blocks.{layer}.ln1", d, bias=False),
        **_linear(w, f"{m}.in_proj", f"{dst}.in_proj", inner + conv_dim + H, d, bias=cfg.proj_bias),
        f"{dst}.conv1d.weight": w.take(f"{m}.conv1d.weight", (conv_dim, 1, cfg.d_conv)),
        **{f"{dst}.{p}": w.take(f"{m}.{p}", (H,)) for p in ("dt_bias", "A_log", "D")},
        f"{dst}.norm.weight": w.take(f"{m}.norm.weight", (inner,)),
        **_linear(w, f"{m}.out_proj", f"{dst}.out_proj", d, inner, bias=cfg.proj_bias),
    }
    if cfg.conv_bias:
        state[f"{dst}.conv1d.bias"] = w.take(f"{m}.conv1d.bias", (conv_dim,))
    return state


def _mamba2_weights(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    state = _mamba_weights_shared(w, cfg)
    for layer in range(cfg.n_layers):
        state.update(_mamba2_layer(w, layer, cfg))
    return state


def _mamba_weights_shared(w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
    """Embedding, final norm and head of a Mamba-2 checkpoint (laid out as Mamba's)."""
    embed = "embedding.weight" if w.has("embedding.weight") else "embeddings.weight"
    return {"embed.weight": w.take(embed, (cfg.vocab_size, cfg.d_model)),
            **_norm(w, "norm_f", "ln_final", cfg.d_model, bias=False), **_head(w, ("lm_head.weight",), cfg)}


# ----------------------------------------------------------------------------- registry


class Family(NamedTuple):
    """How one Hugging Face ``model_type`` converts: the base-model prefix of its weight names,
    ``config(hf_config, label) -> ModelConfig`` and ``weights(Weights, cfg) -> our state dict``."""

    prefix: str
    config: Callable[[dict[str, Any], str], ModelConfig]
    weights: Callable[[Weights, ModelConfig], dict[str, Tensor]]


FAMILIES: dict[str, Family] = {
    "gpt2": Family("transformer.", _gpt2_config, _gpt2_weights),
    "gpt_neox": Family("gpt_neox.", _neox_config, _neox_weights),
    "llama": Family("model.", _llama_config, _llama_weights),
    "mistral": Family("model.", _llama_config, _llama_weights),
    "mamba": Family("backbone.", _mamba_config, _mamba_weights),
    "mamba2": Family("backbone.", _mamba2_config, _mamba2_weights),
}
