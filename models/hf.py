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
``mistral``    Llama without biases, sliding-window attention (``sliding_window``, default 4096).
``qwen2``      Llama with q/k/v biases; sliding window only with ``use_sliding_window`` (layers
               from ``max_window_layers`` on, or as ``layer_types`` says).
``qwen3``      Llama with RMSNorm over each head's queries and keys (``q_norm``, ``k_norm``).
``gemma``      Llama with embeddings times sqrt(d), ``1 + w`` RMSNorms, GeGLU (tanh GELU), tied.
``gemma2``     Gemma with norms after attention and around the MLP, logit scale
               ``query_pre_attn_scalar^-1/2``, attention and final logit soft-capping, local
               (sliding) and global layers alternating.
``mamba``      Mamba-1: parameter names are ours already (``blocks.{l}.mixer.*``).
``mamba2``     Mamba-2 (SSD): transformers' parameter names (``in_proj conv1d dt_bias A_log D norm
               out_proj``); only the default ``time_step_limit`` (no clamp of Δ).
=============  ==================================================================================

Every Hugging Face weight is checked against the shape that ``config.json`` implies before it is
renamed, split or transposed, so an edited config gives an error naming the weight and both shapes.
RoPE: plain and the ``linear``, ``dynamic``, ``llama3`` and ``yarn`` scalings (:mod:`.rope`);
other types (``longrope`` ...) raise ``NotImplementedError``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import Tensor

from . import rope
from .base import CONFIG_FILE, SeqModel
from .checkpoint import CheckpointError
from .config import ModelConfig
from .hf_read import ARG, StreamingCopy, Weights, open_checkpoint
from .registry import model_class
from seqlens.validate import check_device

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


def from_hf(path_or_model: str | os.PathLike | Any, dtype: torch.dtype = torch.float32,
            device: str | torch.device = "cpu") -> SeqModel:
    """Convert a Hugging Face checkpoint (GPT-2, GPT-NeoX / Pythia, Llama, Mistral, Qwen2, Qwen3,
    Gemma, Gemma 2, Mamba, Mamba-2; see the module docstring) into our implementation, returned in eval mode
    with parameters in ``dtype`` (float32 by default; bfloat16 / float16 halve the memory) on ``device``.

    ``path_or_model`` is a local checkpoint directory (``config.json`` + safetensors, possibly
    sharded) or a loaded ``transformers`` ``PreTrainedModel``. A directory is read tensor by tensor
    and copied into the model layer by layer: no second full copy of the weights is held. Raises
    ``FileNotFoundError`` (no such directory), :class:`~seqlens.models.checkpoint.CheckpointError`
    (missing config or weights, pickle-only or corrupt weights, shapes that disagree with the
    config) and ``NotImplementedError`` (a model type or variant we do not implement).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    device = check_device(device) or torch.device("cpu")
    ckpt = open_checkpoint(path_or_model)
    model_type = _model_type(ckpt.config, ckpt.label)
    family = FAMILIES[model_type]
    cfg = family.config(ckpt.config, ckpt.label)
    cfg = cfg.replace(meta={"source": "hf", "model_type": model_type, "path": ckpt.path})
    weights = Weights(ckpt.open_tensors(), family.prefix, ckpt.label)
    target = StreamingCopy(empty_model(cfg, dtype, device), ckpt.label)
    parts = family.weights(weights, cfg)
    for part in [parts] if isinstance(parts, dict) else parts:  # a dict, or pieces (a layer each)
        target.copy(part)
        del part  # free this piece before the generator reads the next
    weights.check_consumed()
    return target.finish()


def empty_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu") -> SeqModel:
    """Our model for ``cfg`` with uninitialised parameters in ``dtype`` on ``device``.

    It is built on the meta device, so no time or memory goes into a random initialisation that
    the checkpoint overwrites; every parameter must then be loaded (``StreamingCopy`` checks)."""
    with torch.device("meta"):
        model = model_class(cfg.arch)(cfg)
    model = model.to(dtype).to_empty(device=device)
    if cfg.tied_embeddings:  # to_empty gives each parameter its own storage: tie again
        model.unembed.weight = model.embed.weight
    return model.eval()


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
            f"{ARG}: {label}: model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}. "
            "Attention-only analyses of other architectures can go through TransformerLens' "
            "TransformerBridge (transformer_lens.model_bridge), which wraps the transformers model")
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
    ``rotary_emb_base`` and ``rope_scaling``), with ``rope_theta`` always set and ``rope_type``
    normalised (v4's ``type``). Types other than :data:`~seqlens.models.rope.ROPE_TYPES` raise."""
    for key in ("rope_scaling", "rope_parameters"):
        if not isinstance(hf.get(key) or {}, dict):
            raise CheckpointError(f"{ARG}: {label}: {CONFIG_FILE}'s {key!r} must be an object, got {hf[key]!r}")
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    kind = rope.rope_type(params)
    if kind not in rope.ROPE_TYPES:
        raise NotImplementedError(f"{ARG}: {label}: RoPE type {kind!r} is not implemented; seqlens implements "
                                  f"{list(rope.ROPE_TYPES)}")
    params.pop("type", None)
    params["rope_type"] = kind
    params.setdefault("rope_theta", hf.get(legacy_theta_key, 10000.0))
    return params


def _rope_fields(hf: dict[str, Any], head_dim: int, label: str) -> dict[str, Any]:
    """``ModelConfig`` fields of a Llama-family rotary embedding: base, rotary width (a partial
    rotary factor where the config has one) and the scaling parameters (None for plain RoPE)."""
    params = _rope(hf, "rope_theta", label)
    base, factor = float(params.pop("rope_theta")), params.pop("partial_rotary_factor", None)
    scaling = None if params["rope_type"] == "default" else params
    return dict(positions="rotary", rotary_base=base, rope_scaling=scaling,
                rotary_dim=None if factor is None else int(head_dim * factor))


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


def _gpt2_weights(w: Weights, cfg: ModelConfig) -> Iterator[dict[str, Tensor]]:
    # one tensor at a time: embedding and head are the largest pieces
    yield {"embed.weight": w.take("wte.weight", (cfg.vocab_size, cfg.d_model))}
    yield {"pos_embed.weight": w.take("wpe.weight", (cfg.n_ctx, cfg.d_model))}
    yield _norm(w, "ln_f", "ln_final", cfg.d_model, bias=True)
    yield _head(w, ("lm_head.weight",), cfg)
    for layer in range(cfg.n_layers):
        yield _gpt2_layer(w, layer, cfg)


# ----------------------------------------------------------------------------- GPT-NeoX (Pythia)


def _neox_config(hf: dict[str, Any], label: str) -> ModelConfig:
    d, n_heads = _required(hf, "hidden_size", label), _required(hf, "num_attention_heads", label)
    params = _rope(hf, "rotary_emb_base", label)
    factor = params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    bias = hf.get("attention_bias", True)
    return _make_config(
        label, arch="transformer", vocab_size=_required(hf, "vocab_size", label), d_model=d,
        n_layers=_required(hf, "num_hidden_layers", label), n_heads=n_heads,
        n_ctx=hf.get("max_position_embeddings", 2048), positions="rotary",
        rotary_dim=int(d // n_heads * factor), rotary_base=float(params["rope_theta"]),
        rope_scaling=None if params["rope_type"] == "default" else scaling, norm="layernorm",
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


def _neox_weights(w: Weights, cfg: ModelConfig) -> Iterator[dict[str, Tensor]]:
    # one tensor at a time: embedding and head are the largest pieces
    yield {"embed.weight": w.take("embed_in.weight", (cfg.vocab_size, cfg.d_model))}
    yield _norm(w, "final_layer_norm", "ln_final", cfg.d_model, bias=True)
    # checkpoints name the head embed_out; transformers v5 renames it lm_head in memory
    yield _head(w, ("embed_out.weight", "lm_head.weight"), cfg)
    for layer in range(cfg.n_layers):
        yield _neox_layer(w, layer, cfg)


# ----------------------------------------------------------------------------- Llama-like families

# model types that are Llama (RMSNorm, rotary, GQA, gated MLP) plus the differences below
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")


def _gemma_act(hf: dict[str, Any], key: str, label: str) -> str:
    """Gemma's MLP activation: ``hidden_activation`` (Gemma 2) or ``hidden_act`` (Gemma); the legacy
    value "gelu" means the tanh approximation (transformers rewrites it the same way)."""
    name = hf.get(key) or "gelu_pytorch_tanh"
    return "gelu_new" if name == "gelu" else _act({key: name}, key, "gelu_pytorch_tanh", label)


def _family_fields(hf: dict[str, Any], kind: str, label: str) -> dict[str, Any]:
    """What each Llama-like family changes (transformers' modeling_<family>.py)."""
    if kind == "qwen2":  # biases on q, k, v (not o)
        return dict(attn_bias=True, attn_out_bias=False)
    if kind == "qwen3":  # RMSNorm over d_head on queries and keys
        return dict(qk_norm=True)
    if kind not in ("gemma", "gemma2"):
        return {}
    fields = dict(norm_offset=1.0, embed_scale=True, tied_embeddings=hf.get("tie_word_embeddings", True))
    if kind == "gemma":
        return dict(fields, act=_gemma_act(hf, "hidden_act", label))
    scalar = _required(hf, "query_pre_attn_scalar", label)
    return dict(fields, act=_gemma_act(hf, "hidden_activation", label), sandwich_norms=True,
                attn_scale=float(scalar) ** -0.5, attn_softcap=hf.get("attn_logit_softcapping"),
                final_softcap=hf.get("final_logit_softcapping"))


def _window_fields(hf: dict[str, Any], kind: str, n_layers: int) -> dict[str, Any]:
    """Sliding-window attention: the window and which layers use it (transformers' defaults: Mistral
    4096 on every layer, Qwen only with use_sliding_window and from layer max_window_layers on,
    Gemma 2 4096 on even layers)."""
    if kind == "mistral":
        window = hf.get("sliding_window", 4096)
    elif kind in ("qwen2", "qwen3"):
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    elif kind == "gemma2":
        window = hf.get("sliding_window", 4096)
    else:
        window = None
    if window is None:
        return {}
    types = hf.get("layer_types")
    if types is None and kind in ("qwen2", "qwen3"):
        first = hf.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    elif types is None and kind == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    return dict(sliding_window=window, layer_types=types)


def _llama_config(hf: dict[str, Any], label: str) -> ModelConfig:
    kind = hf["model_type"]
    d, n_heads = _required(hf, "hidden_size", label), _required(hf, "num_attention_heads", label)
    n_layers, head_dim = _required(hf, "num_hidden_layers", label), hf.get("head_dim") or d // n_heads
    bias = hf.get("attention_bias", False)
    fields = dict(
        arch="transformer", vocab_size=_required(hf, "vocab_size", label), d_model=d, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or (8 if kind == "mistral" else n_heads),
        d_head=head_dim, n_ctx=hf.get("max_position_embeddings", 2048), **_rope_fields(hf, head_dim, label),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), tied_embeddings=hf.get("tie_word_embeddings", False),
        attn_bias=bias, attn_out_bias=bias, mlp="gated", d_mlp=_required(hf, "intermediate_size", label),
        act=_act(hf, "hidden_act", "silu", label) if kind not in ("gemma", "gemma2") else "gelu_new",
        mlp_bias=hf.get("mlp_bias", False))
    fields.update(_family_fields(hf, kind, label))
    fields.update(_window_fields(hf, kind, n_layers))
    return _make_config(label, **fields)


def _llama_norms(w: Weights, src: str, dst: str, cfg: ModelConfig) -> dict[str, Tensor]:
    """The block's norms: Llama's two, or Gemma 2's four (post-attention normalises the mixer's
    output; pre/post-feedforward wrap the MLP)."""
    d = cfg.d_model
    if not cfg.sandwich_norms:
        return {**_norm(w, f"{src}.input_layernorm", f"{dst}.ln1", d, bias=False),
                **_norm(w, f"{src}.post_attention_layernorm", f"{dst}.ln2", d, bias=False)}
    return {**_norm(w, f"{src}.input_layernorm", f"{dst}.ln1", d, bias=False),
            **_norm(w, f"{src}.post_attention_layernorm", f"{dst}.ln1_post", d, bias=False),
            **_norm(w, f"{src}.pre_feedforward_layernorm", f"{dst}.ln2", d, bias=False),
            **_norm(w, f"{src}.post_feedforward_layernorm", f"{dst}.ln2_post", d, bias=False)}


def _llama_layer(w: Weights, layer: int, cfg: ModelConfig) -> dict[str, Tensor]:
    src, dst, d, m = f"layers.{layer}", f"blocks.{layer}", cfg.d_model, cfg.mlp_dim
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attn, mlp = f"{src}.self_attn", f"{src}.mlp"
    state = {
        **_llama_norms(w, src, dst, cfg),
        **_linear(w, f"{attn}.q_proj", f"{dst}.mixer.q", q_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.k_proj", f"{dst}.mixer.k", kv_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.v_proj", f"{dst}.mixer.v", kv_dim, d, bias=cfg.attn_bias),
        **_linear(w, f"{attn}.o_proj", f"{dst}.mixer.o", d, q_dim, bias=cfg.attn_out_bias),
        **_linear(w, f"{mlp}.gate_proj", f"{dst}.mlp.fc_gate", m, d, bias=cfg.mlp_bias),
        **_linear(w, f"{mlp}.up_proj", f"{dst}.mlp.fc_in", m, d, bias=cfg.mlp_bias),
        **_linear(w, f"{mlp}.down_proj", f"{dst}.mlp.fc_out", d, m, bias=cfg.mlp_bias),
    }
    if cfg.qk_norm:
        state.update(_norm(w, f"{attn}.q_norm", f"{dst}.mixer.q_norm", cfg.head_dim, bias=False))
        state.update(_norm(w, f"{attn}.k_norm", f"{dst}.mixer.k_norm", cfg.head_dim, bias=False))
    return state


def _llama_weights(w: Weights, cfg: ModelConfig) -> Iterator[dict[str, Tensor]]:
    # one tensor at a time: embedding and head are the largest pieces
    yield {"embed.weight": w.take("embed_tokens.weight", (cfg.vocab_size, cfg.d_model))}
    yield _norm(w, "norm", "ln_final", cfg.d_model, bias=False)
    yield _head(w, ("lm_head.weight",), cfg)
    for layer in range(cfg.n_layers):
        yield _llama_layer(w, layer, cfg)


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


def _mamba_weights(w: Weights, cfg: ModelConfig) -> Iterator[dict[str, Tensor]]:
    # the original state-spaces checkpoints spell the embedding "embedding" (transformers renames it)
    embed = "embedding.weight" if w.has("embedding.weight") else "embeddings.weight"
    # one tensor at a time: embedding and head are the largest pieces
    yield {"embed.weight": w.take(embed, (cfg.vocab_size, cfg.d_model))}
    yield _norm(w, "norm_f", "ln_final", cfg.d_model, bias=False)
    yield _head(w, ("lm_head.weight",), cfg)
    for layer in range(cfg.n_layers):
        yield _mamba_layer(w, layer, cfg)


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


def _mamba2_weights(w: Weights, cfg: ModelConfig) -> Iterator[dict[str, Tensor]]:
    yield _mamba_weights_shared(w, cfg)
    for layer in range(cfg.n_layers):  # one layer at a time (streamed into the model by from_hf)
        yield _mamba2_layer(w, layer, cfg)


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
    weights: Callable[[Weights, ModelConfig], Iterator[dict[str, Tensor]] | dict[str, Tensor]]


FAMILIES: dict[str, Family] = {
    "gpt2": Family("transformer.", _gpt2_config, _gpt2_weights),
    "gpt_neox": Family("gpt_neox.", _neox_config, _neox_weights),
    **{name: Family("model.", _llama_config, _llama_weights) for name in LLAMA_LIKE},
    "mamba": Family("backbone.", _mamba_config, _mamba_weights),
    "mamba2": Family("backbone.", _mamba2_config, _mamba2_weights),
}
