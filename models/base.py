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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from .config import ModelConfig

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


# ----------------------------------------------------------------------------- norms / mlp


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens' ``hook_normalized`` (after scale and shift)."""

    def __init__(self, d: int, eps: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None
        self.eps = eps
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return self.hook_normalized(y)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as Llama and Mamba do), then cast back."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.hook_normalized(self.weight * y.to(x.dtype))


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return LayerNorm(cfg.d_model, cfg.norm_eps)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Plain ``fc_out(act(fc_in x))`` or gated ``fc_out(act(fc_gate x) * fc_in x)`` (SwiGLU).

    Hooks: ``hook_pre`` (fc_in output, [B, L, d_mlp]), ``hook_post`` (neuron activations after the
    nonlinearity / gating), ``hook_out`` ([B, L, d_model]).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.mlp_bias)
        self.fc_gate = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.mlp_bias) if cfg.mlp == "gated" else None
        self.fc_out = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.act]
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(self.fc_in(x))
        if self.fc_gate is not None:
            post = self.act(self.fc_gate(x)) * pre
        else:
            post = self.act(pre)
        return self.hook_out(self.fc_out(self.hook_post(post)))


# ----------------------------------------------------------------------------- mixers


class Mixer(nn.Module):
    """Base of every sequence mixer. Calling convention: ``forward(x [B, T, d_model], state=None,
    pos=0) -> (out [B, T, d_model], new_state)`` (see the module docstring); ``init_state``
    returns the empty state dict; ``pattern(x) -> [B, H, L, L]`` the (implicit) attention matrix
    for the normalised mixer input ``x``. Every mixer ends with ``hook_out``."""

    supports_state_taps: bool = False
    state_key: str | None = None  # the state entry hook_state reports (see tap_value)

    def __init__(self) -> None:
        super().__init__()
        self.tap_positions: Tensor | None = None  # set by SeqModel.tap_states
        self.hook_out = HookPoint()

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        raise NotImplementedError

    def pattern(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def tap_value(self, state: dict[str, Tensor]) -> Tensor:
        """What ``hook_state`` reports for one position, read off this mixer's state dict (tests
        compare taps with the step loop through it). Default: ``state[self.state_key]``."""
        return state[self.state_key]

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
    for start in range(0, width, block):
        stop = min(start + block, width)
        group = torch.arange(start, stop, device=device) // g
        out.index_add_(1, group, alpha(slice(start, stop)).float())
    return out / g


# ----------------------------------------------------------------------------- blocks


class Block(nn.Module):
    """One pre-norm residual block around a sequence mixer (and an MLP unless ``mlp=None``)."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module, with_mlp: bool):
        super().__init__()
        self.parallel = cfg.parallel_residual and with_mlp
        self.ln1 = make_norm(cfg)
        self.mixer = mixer
        self.ln2 = make_norm(cfg) if with_mlp else None
        self.mlp = MLP(cfg) if with_mlp else None
        self.hook_resid_pre = HookPoint()
        if with_mlp and not self.parallel:
            self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        x = self.hook_resid_pre(x)
        mixed, state = self.mixer(self.ln1(x), state=state, pos=pos)
        if self.mlp is None:
            return self.hook_resid_post(x + mixed), state
        if self.parallel:
            return self.hook_resid_post(x + mixed + self.mlp(self.ln2(x))), state
        mid = self.hook_resid_mid(x + mixed)
        return self.hook_resid_post(mid + self.mlp(self.ln2(mid))), state


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


class StreamOutput(NamedTuple):
    logits: Tensor | None  # [B, L, V], or None when stream(..., return_logits=False)
    state: ModelState


class _StopForward(Exception):
    pass


# ----------------------------------------------------------------------------- model


class SeqModel(HookedRootModule):
    """Base class: embedding, residual blocks, final norm and unembedding, with TransformerLens
    hook points throughout. Subclasses provide ``make_mixer(layer)`` and say whether blocks have
    an MLP; everything else (forward / step / stream / taps / patterns / io) lives here."""

    has_mlp: bool = True

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
        self.name: str | None = None
        self.recipe: Any = None
        self.metrics: dict[str, float] = {}

    def build_extras(self) -> None:
        """Subclasses add architecture-specific modules here (e.g. position embeddings), before
        the hook points are indexed."""

    def make_mixer(self, layer: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

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
        logits = self.unembed(self.ln_final(x))
        if state is None:
            return logits, None
        return logits, ModelState(new_layers, pos + tokens.shape[1])

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [B, L] -> logits [B, L, V]`` (parallel form, from an empty state)."""
        return self._run(tokens, None)[0]

    # -- recurrent inference -------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ModelState:
        if batch <= 0:
            raise ValueError(f"batch: expected a positive integer, got {batch}")
        p = self.embed.weight
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        return ModelState([b.mixer.init_state(batch, device, dtype) for b in self.blocks], 0)

    def forward_chunk(self, tokens: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """Continue from ``state`` with ``tokens [B, T]``: returns ``(logits [B, T, V], state)``."""
        if not isinstance(state, ModelState):
            raise TypeError(f"state: expected a ModelState from init_state(), got {type(state).__name__}")
        if tokens.dim() == 2 and state.layers and tokens.shape[0] != self._state_batch(state):
            raise ValueError(f"tokens: batch {tokens.shape[0]} does not match the state's batch "
                             f"{self._state_batch(state)}")
        return self._run(tokens, state)

    @staticmethod
    def _state_batch(state: ModelState) -> int:
        return next(iter(state.layers[0].values())).shape[0]

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
        if chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
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
    @contextlib.contextmanager
    def tap_states(self, positions: Sequence[int] | Tensor):
        """Inside this context, ``blocks.{l}.mixer.hook_state`` fires with the recurrent state
        right after the tokens at the given absolute ``positions`` (``[B, T, ...]``), computed by
        the scan without materialising the state at every step. When streaming, each chunk fires
        the hook with the positions that fall inside it (absolute positions carry across chunks).
        Attention mixers have no fixed-size state (their state is the KV cache) and raise."""
        pos = torch.as_tensor(positions, dtype=torch.long).flatten()
        if pos.numel() == 0:
            raise ValueError("positions: expected at least one position")
        if int(pos.min()) < 0:
            raise ValueError(f"positions: expected non-negative positions, got {pos.tolist()}")
        if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
            raise ValueError(f"positions: expected strictly increasing positions, got {pos.tolist()}")
        if not all(getattr(b.mixer, "supports_state_taps", False) for b in self.blocks):
            raise NotImplementedError(
                f"tap_states: arch {self.cfg.arch!r} has no fixed-size recurrent state (its state "
                "is the KV cache, see init_state); use hook_k / hook_v instead")
        old = [b.mixer.tap_positions for b in self.blocks]
        for b in self.blocks:
            b.mixer.tap_positions = pos
        try:
            yield pos
        finally:
            for b, o in zip(self.blocks, old):
                b.mixer.tap_positions = o

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
            with self.hooks(fwd_hooks=[(f"blocks.{layer}.ln1.hook_normalized", grab)]):
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

    def attention_stats(self, tokens: Tensor, layer: int, sink_k: int = 4,
                        span: tuple[int, int] | Tensor | None = None, backend: str = "auto") -> Any:
        """Per-query attention statistics of layer ``layer`` (softmax / forgetting attention):
        an :class:`~seqlens.models.kernels.AttentionStats` with ``max_prob``, ``entropy``,
        ``sink_mass`` (keys < ``sink_k``), ``span_mass``, ``argmax``, ``lse`` ``[B, H, L]`` and the
        output, computed without the L×L matrix (Triton on CUDA). Recurrent mixers have no softmax
        rows: use :meth:`mixer_pattern` (implicit attention) for them."""
        x = self.mixer_input(tokens, layer)  # validates layer
        mixer = self.blocks[layer].mixer
        if not callable(getattr(mixer, "stats", None)):
            raise NotImplementedError(
                f"attention_stats: layer {layer}'s mixer ({type(mixer).__name__}) is not softmax attention; "
                "use mixer_pattern(tokens, layer) for the implicit attention of recurrent mixers")
        return mixer.stats(x, sink_k, span, backend)

    def _check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer: expected an integer in [0, {self.cfg.n_layers}), got {layer!r}")

    # -- TransformerLens glue ------------------------------------------------------------------
    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:
        """TransformerLens' ``run_with_cache``, returning an ``ActivationCache``."""
        out, cache = super().run_with_cache(*args, **kwargs)
        if isinstance(cache, ActivationCache):
            return out, cache
        has_batch = not kwargs.get("remove_batch_dim", False)
        return out, ActivationCache(cache, self, has_batch_dim=has_batch)

    def hook_names(self) -> list[str]:
        return list(self.hook_dict.keys())

    # -- io ------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (``{"seqlens": cfg, ...extra}``) and ``model.safetensors``."""
        from safetensors.torch import save_model

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps({"seqlens": self.cfg.to_dict(), **(extra or {})}, indent=2))
        save_model(self, str(d / WEIGHTS_FILE))
        return d

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device
