"""`SeqModel`: the interface every seqlens architecture implements (see docs/design.md).

A model is embed -> blocks -> final norm -> unembed. Each block is pre-norm residual:

    sequential:  mid  = x + mixer(ln1(x));  post = mid + mlp(ln2(mid))
    parallel:    post = x + mixer(ln1(x)) + mlp(ln2(x))          (GPT-NeoX / Pythia)
    mixer only:  post = x + mixer(ln1(x))                        (Mamba: no MLP, no resid_mid)

Mixers (attention, Mamba, ...) share one calling convention, ``mixer(x, state=None, pos=0) ->
(out, new_state)``: with ``state=None`` they run a whole sequence from scratch and return
``new_state=None``; with a state dict they continue from it (``pos`` is the absolute position of
``x[:, 0]``) and return the updated state. ``forward``, ``step`` and ``stream`` are all this one
code path, so they agree by construction up to floating point, and tests hold them equal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from .config import ModelConfig
from .mixer import HookSpec, Mixer, NotApplicableError, applies_to  # noqa: F401 - the protocol lives in models/mixer.py

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def hook_active(hp: HookPoint) -> bool:
    """True when anything observes or edits ``hp``: a TransformerLens / torch forward hook, a
    global torch hook, or an nnsight wrapper (nnsight replaces the instance's ``forward``).

    Fused fast paths that hide an intermediate run only when its hook is inactive.
    """
    from torch.nn.modules import module as _m

    return bool(
        hp._forward_hooks
        or hp._forward_pre_hooks
        or "forward" in vars(hp)
        or _m._global_forward_hooks
        or _m._global_forward_pre_hooks
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace`` it into place: a
    reader or a crash never sees a half-written file, and a failure leaves ``path`` as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- norms / mlp


class Norm(nn.Module):
    """Base of our norms, with TransformerLens 4's hook names: ``hook_scale [B, L, 1]`` (the
    denominator: ``sqrt(var + eps)``, LayerNorm after centring), ``hook_normalized [B, L, d]``
    (before the affine weight and bias), ``hook_out [B, L, d]`` (after them: what the next layer
    reads). The output is computed by one fused call; when a hook on ``hook_scale`` or
    ``hook_normalized`` is active the pieces are computed explicitly, and an edit (a hook returning
    a new tensor) is rebuilt into the output (TL 4 does the same)."""

    HOOKS = (HookSpec("hook_scale", "[B, L, 1]", "sqrt(var + eps) (LayerNorm: of the centred input), TL 4's hook_scale"),
             HookSpec("hook_normalized", "[B, L, d_model]", "normalised input before the affine weight / bias (TL 4)"),
             HookSpec("hook_out", "[B, L, d_model]", "after weight and bias: what the next layer reads"))
    is_layernorm: bool = False

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()
        self.hook_out = HookPoint()

    def fused(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def affine(self, y: Tensor, dtype: torch.dtype) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.fused(x)
        if hook_active(self.hook_scale) or hook_active(self.hook_normalized):
            x32 = x.float() if x.dtype not in (torch.float32, torch.float64) else x
            centred = x32 - x32.mean(-1, keepdim=True) if self.is_layernorm else x32
            scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            hooked_scale = self.hook_scale(scale)
            normalized = centred / hooked_scale
            hooked = self.hook_normalized(normalized)
            if hooked_scale is not scale or hooked is not normalized:
                out = self.affine(hooked, x.dtype)
        return self.hook_out(out)

    def gain(self) -> Tensor:
        """The per-feature factor the normalised input is multiplied by (Gemma: ``1 + weight``)."""
        return self.weight

    def linear_part(self) -> Tensor:
        """The linear part ``N [d, d]`` in row convention, ``x ↦ x N``: ``(I − 11ᵀ/d) diag(w)``
        (LayerNorm: centre, then weight) or ``diag(w)`` (RMSNorm; Gemma ``diag(1 + w)``). Left out:
        the ``1/scale`` (a positive factor per token) and the bias, as TransformerLens' ``fold_ln`` does."""
        w = self.gain().detach()
        N = torch.diag(w)
        if self.is_layernorm:
            d = w.shape[0]
            N = (torch.eye(d, dtype=w.dtype, device=w.device) - 1.0 / d) @ N
        return N


class LayerNorm(Norm):
    """LayerNorm (``F.layer_norm``), with an optional bias."""

    is_layernorm = True

    def __init__(self, d: int, eps: float, bias: bool = True):
        super().__init__(d, eps)
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def fused(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def affine(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        y = y * self.weight
        return (y if self.bias is None else y + self.bias).to(dtype)


class RMSNorm(Norm):
    """RMSNorm computed in float32 (as Llama and Mamba do; float64 stays float64), then cast back.
    With ``offset`` (Gemma: 1) the gain is ``offset + weight`` and is applied before the cast, as
    Gemma does."""

    def __init__(self, d: int, eps: float, offset: float = 0.0):
        super().__init__(d, eps)
        self.offset = offset

    def gain(self) -> Tensor:
        return self.weight + self.offset if self.offset else self.weight

    def fused(self, x: Tensor) -> Tensor:
        x32 = x if x.dtype == torch.float64 else x.float()  # reference checks run in float64
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (y * (self.offset + self.weight.to(y.dtype))).to(x.dtype)
        return self.weight * y.to(x.dtype)

    def affine(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        if self.offset:
            y = y if y.dtype == torch.float64 else y.float()
            return (y * (self.offset + self.weight.to(y.dtype))).to(dtype)
        return self.weight * y.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_offset)
    return LayerNorm(cfg.d_model, cfg.norm_eps)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Plain ``fc_out(act(fc_in x))`` or gated ``fc_out(act(fc_gate x) * fc_in x)`` (SwiGLU).

    Hooks (TransformerLens' names and meanings): ``hook_pre [B, L, d_mlp]``, the pre-activation
    (plain: ``fc_in x``; gated: the gate ``fc_gate x``), ``hook_pre_linear`` (gated only: the linear
    branch ``fc_in x``, Llama's ``up_proj``), ``hook_post`` (neuron activations after the
    nonlinearity / gating), ``hook_out [B, L, d_model]``.
    """

    HOOKS = (HookSpec("hook_pre", "[B, L, d_mlp]", "pre-activation (gated: the gate fc_gate x, Llama's gate_proj)"),
             HookSpec("hook_pre_linear", "[B, L, d_mlp]", "gated MLP's linear branch fc_in x (Llama's up_proj)", "gated_mlp"),
             HookSpec("hook_post", "[B, L, d_mlp]", "neuron activations after the nonlinearity / gating"),
             HookSpec("hook_out", "[B, L, d_model]", "the MLP's output"))

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.mlp_bias)
        self.fc_gate = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.mlp_bias) if cfg.mlp == "gated" else None
        self.fc_out = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.act]
        self.hook_pre = HookPoint()
        if self.fc_gate is not None:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if self.fc_gate is not None:
            post = self.act(self.hook_pre(self.fc_gate(x))) * self.hook_pre_linear(self.fc_in(x))
        else:
            post = self.act(self.hook_pre(self.fc_in(x)))
        return self.hook_out(self.fc_out(self.hook_post(post)))


# ----------------------------------------------------------------------------- mixers


def grouped_pattern(alpha: Callable[[slice], Tensor], width: int, heads: int, shape: tuple[int, int],
                    budget: int, device: torch.device) -> Tensor:
    """Mean of a per-channel implicit attention over ``heads`` contiguous channel groups,
    ``[B, H, L, L]`` (the "heads" of Mamba, minGRU and LSTM mixers). ``alpha(slice)`` returns
    ``[B, d, L, L]`` for those channels; channels are processed in blocks so each block holds at
    most about ``budget`` elements of output."""
    B, L = shape
    g = width // heads
    block = max(1, budget // max(1, B * L * L))
    out = torch.zeros(B, heads, L, L, device=device, dtype=torch.float32)
    if block >= g:  # whole groups per block: a reshape-sum (index_add_ over dim 1 is slow on CPU)
        step = (block // g) * g
        for start in range(0, width, step):
            stop = min(start + step, width)
            a = alpha(slice(start, stop)).float()
            out[:, start // g:stop // g] += a.reshape(B, (stop - start) // g, g, L, L).sum(2)
        return out / g
    for h in range(heads):  # blocks inside one group
        for start in range(h * g, (h + 1) * g, block):
            out[:, h] += alpha(slice(start, min(start + block, (h + 1) * g))).float().sum(1)
    return out / g


# ----------------------------------------------------------------------------- blocks


class Block(nn.Module):
    """One pre-norm residual block around a sequence mixer (and an MLP unless ``mlp=None``)."""

    HOOKS = (HookSpec("hook_resid_pre", "[B, L, d_model]", "residual stream into the block"),
             HookSpec("hook_resid_mid", "[B, L, d_model]", "after the mixer, before the MLP", "sequential_mlp"),
             HookSpec("hook_resid_post", "[B, L, d_model]", "residual stream out of the block"))

    def __init__(self, cfg: ModelConfig, mixer: nn.Module, with_mlp: bool):
        super().__init__()
        self.parallel = cfg.parallel_residual and with_mlp
        self.ln1 = make_norm(cfg)
        self.mixer = mixer
        # Gemma 2's "sandwich": a norm on the mixer's output (and the MLP's) before the residual add
        self.ln1_post = make_norm(cfg) if cfg.sandwich_norms else None
        self.ln2 = make_norm(cfg) if with_mlp else None
        self.mlp = MLP(cfg) if with_mlp else None
        self.ln2_post = make_norm(cfg) if cfg.sandwich_norms and with_mlp else None
        self.hook_resid_pre = HookPoint()
        if with_mlp and not self.parallel:
            self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        x = self.hook_resid_pre(x)
        mixed, state = self.mixer(self.ln1(x), state=state, pos=pos)
        if self.ln1_post is not None:
            mixed = self.ln1_post(mixed)
        if self.mlp is None:
            return self.hook_resid_post(x + mixed), state
        if self.parallel:
            return self.hook_resid_post(x + mixed + self.mlp_branch(x)), state
        mid = self.hook_resid_mid(x + mixed)
        return self.hook_resid_post(mid + self.mlp_branch(mid)), state

    def mlp_branch(self, x: Tensor) -> Tensor:
        out = self.mlp(self.ln2(x))
        return out if self.ln2_post is None else self.ln2_post(out)


# ----------------------------------------------------------------------------- state


@dataclass
class ModelState:
    """Recurrent state of a whole model: one dict of tensors per layer plus the number of tokens
    consumed so far (``pos``). For attention layers the dict is the KV cache (it grows with
    ``pos``); for recurrent mixers it has a fixed size."""

    layers: list[dict[str, Tensor]]
    pos: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in self.layers for t in d.values())

    def clone(self) -> "ModelState":
        return ModelState([{k: v.clone() for k, v in d.items()} for d in self.layers], self.pos)


class Padding(NamedTuple):
    """Left padding of one ``forward(tokens, attention_mask)`` run, seen by the model and its
    mixers: ``mask [B, L]`` (True = a real token) and ``positions [B, L]`` (each row counts from its
    first real token, so a padded row computes what it would alone)."""

    mask: Tensor
    positions: Tensor


class Batch(NamedTuple):
    """Token ids ``[B, L]`` of several texts, padded, and their ``attention_mask [B, L]`` (1 = real)."""

    tokens: Tensor
    attention_mask: Tensor


class StreamOutput(NamedTuple):
    logits: Tensor | None  # [B, L, V], or None when stream(..., return_logits=False)
    state: ModelState


class _StopForward(Exception):
    pass


_ALIAS = re.compile(r"^blocks\.(?P<layer>\d+)\.(?P<rest>attn\.hook_\w+|hook_attn_out|hook_mlp_out)$")


class SeqCache(ActivationCache):
    """An ``ActivationCache`` whose lookups also accept TransformerLens' names and
    ``get_act_name`` shorthands (resolved with ``SeqModel.resolve_hook_name``)."""

    def _primary(self, key: Any) -> Any:
        import transformer_lens.utilities as utils

        if isinstance(key, str) and key in self.cache_dict:
            return key
        if isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            key = utils.get_act_name(*key)
        name = self.model.resolve_hook_name(key)
        if name not in self.cache_dict and isinstance(key, str) and "." not in key:
            name = self.model.resolve_hook_name(utils.get_act_name(key))
        return name

    def __getitem__(self, key: Any) -> Tensor:
        return self.cache_dict[self._primary(key)]

    def __contains__(self, key: Any) -> bool:
        try:
            return self._primary(key) in self.cache_dict
        except Exception:
            return False


# ----------------------------------------------------------------------------- model


class SeqModel(HookedRootModule):
    """Base class: embedding, residual blocks, final norm and unembedding, with TransformerLens
    hook points throughout. Subclasses provide ``make_mixer(layer)`` and say whether blocks have
    an MLP; everything else (forward / step / stream / taps / patterns / io) lives here."""

    has_mlp: bool = True
    HOOKS = (HookSpec("hook_embed", "[B, L, d_model]", "token embedding"),)

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:  # pragma: no cover - abstract
        """The :class:`Mixer` subclass this model builds for ``cfg`` (its ``make_mixer``)."""
        raise NotImplementedError

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            Block(cfg, self.make_mixer(layer), with_mlp=self.has_mlp and not cfg.attn_only)
            for layer in range(cfg.n_layers)
        )
        self.ln_final = make_norm(cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_embeddings:
            self.unembed.weight = self.embed.weight
        self.build_extras()
        self.setup()  # TransformerLens: index every HookPoint by its module name
        # provenance, set by the loaders (seqlens.models.io / zoo): the tokenizer when the
        # directory has one, the directory / zoo name, the training Recipe and its metrics
        self.tokenizer: Any = None
        self._tap_runs: list[tuple[int, int]] | None = None  # [start, end) runs inside tap_states
        self.name: str | None = None
        self.recipe: Any = None
        self.metrics: dict[str, float] = {}
        self.padding: Padding | None = None  # set during forward(tokens, attention_mask) with left padding

    def build_extras(self) -> None:
        """Subclasses add architecture-specific modules here (e.g. position embeddings), before
        the hook points are indexed."""

    def make_mixer(self, layer: int) -> nn.Module:
        return self.mixer_class(self.cfg)(self.cfg)

    # -- core -------------------------------------------------------------------------------
    def embed_tokens(self, tokens: Tensor, pos: int) -> Tensor:
        """Token (and, for learned positions, position) embedding of ``tokens`` starting at
        absolute position ``pos``."""
        return self.hook_embed(self.embed(tokens))

    def check_tokens(self, tokens: Tensor, name: str = "tokens") -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(f"{name}: expected a LongTensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name}: expected integer token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"{name}: expected shape [batch, seq_len], got {list(tokens.shape)}")
        if tokens.numel() == 0:  # one behaviour for every mixer: [B, 0] and [0, L] are refused
            raise ValueError(f"{name}: expected at least one token in at least one sequence, got shape "
                             f"{list(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"{name}: token ids must lie in [0, {self.cfg.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens.long()

    def _run(self, tokens: Tensor, state: ModelState | None) -> tuple[Tensor, ModelState | None]:
        tokens = self.check_tokens(tokens)
        pos = 0 if state is None else state.pos
        x = self.embed_tokens(tokens, pos)
        new_layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state.layers[i], pos=pos)
            new_layers.append(layer_state)
        logits = self.unembed_resid(self.ln_final(x))
        if self._tap_runs is not None:  # which positions tap_states' taps could fire at (see there)
            self._tap_runs.append((pos, pos + tokens.shape[1]))
        if state is None:
            return logits, None
        return logits, ModelState(new_layers, pos + tokens.shape[1])

    def unembed_resid(self, x: Tensor) -> Tensor:
        """Logits ``[B, L, V]`` of the final normalised residual ``x`` (a subclass may cap them)."""
        return self.unembed(x)

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``tokens [B, L] -> logits [B, L, V]`` (parallel form, from an empty state).

        ``attention_mask [B, L]`` (1 / True = real token, 0 = padding; as ``to_tokens`` returns)
        lets rows of different lengths share a batch: with right padding every causal model
        computes each row's real tokens as it would alone (pads come after them). With left
        padding, attention mixers (``Mixer.handles_padding``) mask pad keys and count positions
        from each row's first real token; recurrent mixers have their ``pad_write_hooks`` zeroed at
        pads, so their state stays at its zero start through them; a mixer with neither refuses.
        Logits at pad positions are meaningless."""
        if attention_mask is None:
            return self._run(tokens, None)[0]
        padding = self.padding_for(self.check_tokens(tokens), attention_mask)
        if padding is None:
            return self._run(tokens, None)[0]
        old = self.padding, [m.padding if hasattr(m, "padding") else None for m in self.mixers]
        self.padding = padding
        for m in self.mixers:
            m.padding = padding
        handles = self._zero_pad_writes(padding.mask)
        try:
            return self._run(tokens, None)[0]
        finally:
            for h in handles:
                h.remove()
            self.padding = old[0]
            for m, p in zip(self.mixers, old[1]):
                m.padding = p

    def _zero_pad_writes(self, mask: Tensor) -> list[Any]:
        """Left padding on recurrent mixers: zero each mixer's ``pad_write_hooks`` at pad positions,
        so the state stays at its zero start until a row's first real token. Registered as torch
        forward hooks run before any user hook (users see the values the model used)."""
        def zero(module: nn.Module, args: Any, out: Tensor) -> Tensor:
            keep = mask.view(*mask.shape, *([1] * (out.dim() - 2)))
            return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))

        handles = []
        for m in self.mixers:
            if not m.handles_padding:
                for name in m.pad_write_hooks:
                    handles.append(m.get_submodule(name).register_forward_hook(zero, prepend=True))
        return handles

    def padding_for(self, tokens: Tensor, attention_mask: Any) -> Padding | None:
        """The :class:`Padding` of a left-padded batch; None when no row has left padding (right
        padding needs no mask in a causal model). ValueError unless ``attention_mask`` is a
        0 / 1 tensor shaped like ``tokens`` with each row's real tokens contiguous and at one end."""
        mask = self._check_mask(tokens, attention_mask)
        left = ~mask[:, 0]
        if not bool(left.any()):
            return None
        if not all(m.handles_padding or m.pad_write_hooks for m in self.mixers):
            kinds = sorted({type(m).__name__ for m in self.mixers if not (m.handles_padding or m.pad_write_hooks)})
            raise NotImplementedError(
                f"attention_mask: left padding is not implemented for {kinds} mixers (arch "
                f"{self.cfg.arch!r}); pad on the right (to_tokens(..., padding_side='right')), which is "
                "exact for every causal model")
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return Padding(mask, positions)

    @staticmethod
    def _check_mask(tokens: Tensor, attention_mask: Any) -> Tensor:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask: expected a tensor of 0 / 1 shaped like tokens, got "
                            f"{type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != tuple(tokens.shape):
            raise ValueError(f"attention_mask: expected shape {list(tokens.shape)} (that of tokens), got "
                             f"{list(attention_mask.shape)}")
        if attention_mask.is_floating_point() or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask: expected integer or bool entries 0 (padding) and 1 (token)")
        mask = attention_mask.to(device=tokens.device, dtype=torch.bool)
        steps = mask.long().diff(dim=1)
        one_run = (steps.abs().sum(1) <= 1) | ((steps.sum(1) == 0) & (steps.abs().sum(1) == 2) & ~mask[:, 0])
        if not bool(mask.any(1).all()) or not bool(one_run.all()):
            raise ValueError("attention_mask: every row needs at least one real token (1) and its real tokens "
                             "in one contiguous run, padding (0) only before it (left) or after it (right)")
        return mask

    def to_tokens(self, texts: str | Sequence[str], padding_side: str = "right", bos: bool = False) -> Batch:
        """Token ids of ``texts`` padded to one length: a :class:`Batch` ``(tokens [B, L],
        attention_mask [B, L])`` for ``forward(tokens, attention_mask=...)``. Encoding is
        :func:`seqlens.text.encode` with the model's tokenizer (bytes without one); the pad id is
        the tokenizer's ``pad_token_id`` (else ``eos_token_id``, else 0): only the mask matters."""
        from seqlens.text import encode

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a string or a non-empty list of strings")
        ids = [encode(t, self.tokenizer, bos=bos) for t in texts]
        if not all(ids):
            raise ValueError(f"texts: text {[len(i) for i in ids].index(0)} encodes to no tokens")
        pad = next((v for v in (getattr(self.tokenizer, "pad_token_id", None),
                                getattr(self.tokenizer, "eos_token_id", None)) if v is not None), 0)
        L = max(len(i) for i in ids)
        tokens = torch.full((len(ids), L), int(pad), dtype=torch.long)
        mask = torch.zeros(len(ids), L, dtype=torch.long)
        for row, seq in enumerate(ids):
            cols = slice(L - len(seq), L) if padding_side == "left" else slice(0, len(seq))
            tokens[row, cols], mask[row, cols] = torch.tensor(seq), 1
        return Batch(tokens.to(self.device), mask.to(self.device))

    # -- recurrent inference -------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ModelState:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        p = self.embed.weight
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        return ModelState([b.mixer.init_state(batch, device, dtype) for b in self.blocks], 0)

    def forward_chunk(self, tokens: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """Continue from ``state`` with ``tokens [B, T]``: returns ``(logits [B, T, V], state)``."""
        self.check_state(state)
        if tokens.dim() == 2 and state.layers and tokens.shape[0] != self._state_batch(state):
            raise ValueError(f"tokens: batch {tokens.shape[0]} does not match the state's batch "
                             f"{self._state_batch(state)}")
        return self._run(tokens, state)

    @staticmethod
    def _state_batch(state: ModelState) -> int:
        return next(iter(state.layers[0].values())).shape[0]

    def check_state(self, state: Any) -> None:
        """Require ``state`` to belong to this model: a ModelState with one dict per layer whose
        keys and tensor shapes are those of ``init_state`` (dims that are empty there grow with
        ``pos``, e.g. a KV cache's sequence axis); clear ValueErrors naming ``state``."""
        if not isinstance(state, ModelState):
            raise TypeError(f"state: expected a ModelState from init_state(), got {type(state).__name__}")
        if isinstance(state.pos, bool) or not isinstance(state.pos, int) or state.pos < 0:
            raise ValueError(f"state: pos must be a non-negative integer, got {state.pos!r}")
        if not isinstance(state.layers, list) or len(state.layers) != len(self.blocks):
            n = len(state.layers) if isinstance(state.layers, list) else type(state.layers).__name__
            raise ValueError(f"state: has {n} layers but this model has {len(self.blocks)}; "
                             "it comes from another model (use this model's init_state())")
        first = state.layers[0] if state.layers else None
        batch = next((v.shape[0] for v in first.values() if isinstance(v, Tensor) and v.dim()), 1) \
            if isinstance(first, dict) else 1
        for i, (block, got) in enumerate(zip(self.blocks, state.layers)):
            want = block.mixer.init_state(batch, torch.device("meta"), self.embed.weight.dtype)
            if not isinstance(got, dict) or set(got) != set(want):
                keys = sorted(got) if isinstance(got, dict) else type(got).__name__
                raise ValueError(f"state: layer {i} has entries {keys} but this model's {self.cfg.arch} "
                                 f"layer expects {sorted(want)}; it comes from another model")
            for key, t in want.items():
                v = got[key]
                ok = isinstance(v, Tensor) and v.dim() == t.dim() and all(
                    a == b or b == 0 for a, b in zip(v.shape, t.shape))
                if not ok:
                    shape = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise ValueError(f"state: layer {i} entry {key!r} has shape {shape} but this model "
                                     f"expects {list(t.shape)}; it comes from another model")

    def step(self, tokens: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """One token per sequence: ``tokens [B] -> (logits [B, V], state)``."""
        if tokens.dim() != 1:
            raise ValueError(f"tokens: expected shape [batch] for step(), got {list(tokens.shape)}")
        logits, state = self.forward_chunk(tokens[:, None], state)
        return logits[:, 0], state

    @torch.no_grad()
    def stream(
        self,
        tokens: Tensor | Iterable[Tensor],
        chunk_size: int = 1024,
        state: ModelState | None = None,
        callback: Callable[[int, Tensor, ModelState], None] | None = None,
        return_logits: bool = True,
        progress: bool = False,
    ) -> StreamOutput:
        """Run an arbitrarily long input chunk by chunk.

        ``tokens`` is ``[B, L]`` (split into ``chunk_size`` pieces) or an iterable of ``[B, T]``
        chunks (e.g. read lazily from disk). ``callback(start, logits_chunk, state)`` sees every
        chunk. Memory is O(state) plus one chunk when ``return_logits=False``; for recurrent
        mixers the state has a fixed size, for attention it is the KV cache (O(L)).
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable (start, logits, state), got {type(callback).__name__}")
        chunks, total = self._chunks(tokens, chunk_size)
        outs: list[Tensor] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="stream", unit="tok")
        for chunk in chunks:
            chunk = self.check_tokens(chunk, "tokens (chunk)")
            if state is None:
                state = self.init_state(chunk.shape[0])
            start = state.pos
            logits, state = self.forward_chunk(chunk, state)
            if callback is not None:
                callback(start, logits, state)
            if return_logits:
                outs.append(logits)
            if bar is not None:
                bar.update(chunk.shape[1])
        if bar is not None:
            bar.close()
        if state is None:
            raise ValueError("tokens: the input is empty")
        return StreamOutput(torch.cat(outs, dim=1) if return_logits else None, state)

    @staticmethod
    def _chunks(tokens: Tensor | Iterable[Tensor], chunk_size: int) -> tuple[Iterator[Tensor], int | None]:
        if isinstance(tokens, Tensor):
            if tokens.dim() != 2:
                raise ValueError(f"tokens: expected shape [batch, seq_len], got {list(tokens.shape)}")
            return iter(tokens.split(chunk_size, dim=1)), tokens.shape[1]
        return iter(tokens), None

    # -- state taps ------------------------------------------------------------------------------
    @applies_to(lambda model: model.supports_state_taps, needs="a fixed-size recurrent state (attention: use hook_k / hook_v)")
    @contextlib.contextmanager
    def tap_states(self, positions: Sequence[int] | Tensor):
        """Inside this context, ``blocks.{l}.mixer.hook_state`` fires with the recurrent state
        right after the tokens at the given absolute ``positions`` (``[B, T, ...]``), computed by
        the scan without materialising the state at every step. When streaming, each chunk fires
        the hook with the positions that fall inside it (absolute positions carry across chunks).
        Attention mixers have no fixed-size state (their state is the KV cache) and raise."""
        pos = self._tap_tensor(positions)
        if pos.numel() == 0:
            raise ValueError("positions: expected at least one position")
        if int(pos.min()) < 0:
            raise ValueError(f"positions: expected non-negative positions, got {pos.tolist()}")
        if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
            raise ValueError(f"positions: expected strictly increasing positions, got {pos.tolist()}")
        if not self.supports_state_taps:
            raise NotApplicableError(
                f"tap_states: arch {self.cfg.arch!r} has no fixed-size recurrent state (its state "
                "is the KV cache, see init_state); use hook_k / hook_v instead")
        old, old_runs = [b.mixer.tap_positions for b in self.blocks], self._tap_runs
        for b in self.blocks:
            b.mixer.tap_positions = pos
        self._tap_runs = []
        try:
            yield pos
            runs = self._tap_runs
        finally:
            for b, o in zip(self.blocks, old):
                b.mixer.tap_positions = o
            self._tap_runs = old_runs
        self._check_taps_fired(pos, runs)

    @staticmethod
    def _check_taps_fired(pos: Tensor, runs: list[tuple[int, int]]) -> None:
        """After tap_states: when inputs ran but some tap positions lay in none of them (past the
        end of a stream, or before the position a continued state started at), say so."""
        if not runs:
            return
        fired = torch.zeros_like(pos, dtype=torch.bool)
        for start, end in runs:
            fired |= (pos >= start) & (pos < end)
        if not bool(fired.all()):
            covered = ", ".join(f"[{a}, {b})" for a, b in sorted(set(runs))[:4])
            raise ValueError(f"positions: tap positions {pos[~fired].tolist()[:8]} lie outside the input run "
                             f"inside tap_states (positions {covered}); hook_state never fired for them")

    @staticmethod
    def _tap_tensor(positions: Any) -> Tensor:
        """``positions`` as a flat LongTensor; non-integer values (2.7, True) are an error, not truncated."""
        try:
            pos = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"positions: expected a sequence of integers, got {positions!r}") from None
        if pos.numel() and (pos.dtype == torch.bool or pos.is_floating_point() or pos.is_complex()):
            raise TypeError(f"positions: expected integer positions, got {positions!r}")
        return pos.long().flatten()

    # -- patterns ------------------------------------------------------------------------------
    def mixer_input(self, tokens: Tensor, layer: int) -> Tensor:
        """The normalised input ``ln1(resid_pre)`` of layer ``layer``'s mixer, ``[B, L, d_model]``
        (the forward pass stops right after it)."""
        self._check_layer(layer)
        captured: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: HookPoint) -> Tensor:
            captured["x"] = x
            raise _StopForward

        try:
            with self.hooks(fwd_hooks=[(f"blocks.{layer}.ln1.hook_out", grab)]):
                self(tokens)
        except _StopForward:
            pass
        return captured["x"]

    @torch.no_grad()
    def mixer_pattern(self, tokens: Tensor, layer: int) -> Tensor:
        """Attention matrix ``[B, H, L, L]`` of layer ``layer``'s sequence mixer: the softmax
        pattern for attention, the implicit attention (docs/methods.md §7) for recurrent mixers, averaged
        over the mixer's head groups (see the mixer's ``pattern`` docstring)."""
        x = self.mixer_input(tokens, layer)  # validates layer
        return self.blocks[layer].mixer.pattern(x)

    @applies_to(lambda model: model.is_softmax, needs="softmax attention (recurrent mixers: mixer_pattern)")
    def attention_stats(self, tokens: Tensor, layer: int, sink_k: int = 4,
                        span: tuple[int, int] | Tensor | None = None, backend: str = "auto") -> Any:
        """Per-query attention statistics of layer ``layer`` (softmax / forgetting attention):
        an :class:`~seqlens.models.kernels.AttentionStats` with ``max_prob``, ``entropy``,
        ``sink_mass`` (keys < ``sink_k``), ``span_mass``, ``argmax``, ``lse`` ``[B, H, L]`` and the
        output, computed without the L×L matrix (Triton on CUDA). Recurrent mixers have no softmax
        rows: use :meth:`mixer_pattern` (implicit attention) for them."""
        x = self.mixer_input(tokens, layer)  # validates layer
        mixer = self.blocks[layer].mixer
        if not mixer.is_softmax:
            raise NotApplicableError(
                f"attention_stats: layer {layer}'s mixer ({type(mixer).__name__}) is not softmax attention; "
                "use mixer_pattern(tokens, layer) for the implicit attention of recurrent mixers")
        return mixer.stats(x, sink_k, span, backend)

    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer: expected an integer in [0, {self.cfg.n_layers}), got {layer!r}")

    # -- the mixer protocol, model-wide --------------------------------------------------------
    @property
    def mixers(self) -> list[Mixer]:
        return [b.mixer for b in self.blocks]

    @property
    def n_groups(self) -> int:
        """"Heads" per layer: attention / GLA heads, or channel groups of recurrent mixers (the
        one place this number comes from; see ``Mixer.groups``)."""
        return self.blocks[0].mixer.groups.n

    @property
    def supports_state_taps(self) -> bool:
        """Whether every mixer has a fixed-size state that :meth:`tap_states` can report."""
        return all(m.supports_state_taps for m in self.mixers)

    @property
    def context_limit(self) -> int | None:
        """The longest input (in tokens) the model accepts, or None: only a learned position table
        is a hard limit (it cannot extrapolate); with rotary positions, FoX's decay or a recurrence
        ``cfg.n_ctx`` just records the training context."""
        return None

    @property
    def is_softmax(self) -> bool:
        """Whether every mixer is softmax attention (pattern rows are distributions)."""
        return all(m.is_softmax for m in self.mixers)

    @property
    def backend(self) -> str:
        return self.blocks[0].mixer.backend

    def set_backend(self, backend: str) -> "SeqModel":
        """Kernel backend of every mixer's sequence op ("auto", "triton", "chunked", "loop",
        "ref", as each mixer's ``BACKENDS`` allows); ValueError naming ``backend`` otherwise."""
        for m in self.mixers:
            m.set_backend(backend)
        return self

    def norm_modules(self) -> dict[str, nn.Module]:
        """Every normalisation module, by name (ours and torch's LayerNorm)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, (Norm, nn.LayerNorm))}

    # -- TransformerLens glue ------------------------------------------------------------------
    def resolve_hook_name(self, name: str) -> str:
        """The primary hook name for ``name``: TransformerLens' attention names resolve on softmax
        attention layers (``blocks.{l}.attn.X`` -> ``blocks.{l}.mixer.X``, ``blocks.{l}.hook_attn_out``
        -> ``blocks.{l}.mixer.hook_out``), ``blocks.{l}.hook_mlp_out`` -> ``blocks.{l}.mlp.hook_out``;
        any other name is returned unchanged."""
        if name in self.hook_dict or not isinstance(name, str):
            return name
        m = _ALIAS.match(name)
        if m is None:
            return name
        layer, rest = int(m["layer"]), m["rest"]
        if not 0 <= layer < len(self.blocks):
            return name
        if rest == "hook_mlp_out":
            return f"blocks.{layer}.mlp.hook_out"
        if not self.blocks[layer].mixer.is_softmax:
            return name
        if rest == "hook_attn_out":
            return f"blocks.{layer}.mixer.hook_out"
        return f"blocks.{layer}.mixer.{rest[len('attn.'):]}" if rest.startswith("attn.") else name

    def _resolve_filter(self, names_filter: Any) -> Any:
        if isinstance(names_filter, str):
            return self.resolve_hook_name(names_filter)
        if isinstance(names_filter, (list, tuple)):
            return [self.resolve_hook_name(n) for n in names_filter]
        if callable(names_filter):
            aliases = self.hook_aliases()
            return lambda name: names_filter(name) or any(names_filter(a) for a in aliases.get(name, ()))
        return names_filter

    def hook_aliases(self) -> dict[str, list[str]]:
        """``primary name -> [TransformerLens aliases]`` of this model (see :meth:`resolve_hook_name`)."""
        out: dict[str, list[str]] = {}
        for l, block in enumerate(self.blocks):
            names = [f"blocks.{l}.hook_mlp_out"]
            if block.mixer.is_softmax:
                names += [f"blocks.{l}.hook_attn_out"]
                names += [f"blocks.{l}.attn.{n.split('.')[-1]}" for n in self.hook_dict
                          if n.startswith(f"blocks.{l}.mixer.")]
            for a in names:
                primary = self.resolve_hook_name(a)
                if primary != a and primary in self.hook_dict:
                    out.setdefault(primary, []).append(a)
        return out

    def _enable_hook(self, name: Any, hook: Callable, dir: str = "fwd") -> None:  # type: ignore[override]
        """TransformerLens' hook installation, with aliases resolved (run_with_hooks, hooks())."""
        return super()._enable_hook(name=self._resolve_filter(name) if isinstance(name, str) or callable(name)
                                    else name, hook=hook, dir=dir)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:
        """TransformerLens' ``run_with_cache``, returning an ``ActivationCache`` keyed by primary
        names that also answers to TransformerLens' names (``cache["pattern", 0]``,
        ``cache["blocks.0.attn.hook_z"]``); ``names_filter`` accepts either."""
        if "names_filter" in kwargs:
            kwargs["names_filter"] = self._resolve_filter(kwargs["names_filter"])
        out, cache = super().run_with_cache(*args, **kwargs)
        data = cache.cache_dict if isinstance(cache, ActivationCache) else cache
        has_batch = not kwargs.get("remove_batch_dim", False)
        return out, SeqCache(data, self, has_batch_dim=has_batch)

    def hook_names(self) -> list[str]:
        return list(self.hook_dict.keys())

    # -- io ------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` then ``config.json`` (``{"seqlens": cfg, ...extra}``), each
        atomically (:func:`atomic_write`)."""
        from safetensors.torch import save_model

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"seqlens": self.cfg.to_dict(), **(extra or {})}, indent=2)
        atomic_write(d / WEIGHTS_FILE, lambda tmp: save_model(self, str(tmp)))
        atomic_write(d / CONFIG_FILE, lambda tmp: tmp.write_text(text))
        return d

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device
