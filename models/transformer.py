"""Softmax attention and forgetting attention (FoX) Transformers.

One file covers GPT-2 style (learned positions, LayerNorm, GELU MLP), GPT-NeoX / Pythia
(partial rotary, parallel residual) and Llama style (rotary, RMSNorm, SwiGLU, grouped-query
attention) models, plus the Forgetting Transformer (Lin et al. 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate"): a per-head scalar forget gate ``f_t = σ(w_f·x_t + b_f)``
adds ``Σ_{k=j+1..i} log f_k`` to the attention logit of query i and key j (paper eq. 4).

Hooks of an attention mixer (``blocks.{l}.mixer.*``): ``hook_q [B, L, H, d_head]``, ``hook_k``,
``hook_v [B, L, H_kv, d_head]``, ``hook_rot_q`` / ``hook_rot_k`` (after rotary; rotary models
only), ``hook_attn_scores [B, H, L_q, L_k]`` (scaled logits incl. the FoX forget bias, masked
entries -inf), ``hook_pattern [B, H, L_q, L_k]``, ``hook_z [B, L, H, d_head]`` (per-head output
before ``o``), ``hook_out [B, L, d_model]``; FoX adds ``hook_log_decay [B, L, H]`` (log f_t, its
log decay; called ``hook_log_forget`` before). The machine-readable list is ``Attention.HOOKS``
(docs/hooks.md is generated from it). TransformerLens' names (``blocks.{l}.attn.hook_pattern``,
``blocks.{l}.hook_attn_out`` ...) resolve to these (``SeqModel.resolve_hook_name``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from . import rope
from .base import Mixer, Padding, RMSNorm, SeqModel, hook_active
from .mixer import (AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, NotApplicableError,
                    OVFactors, StateSpec, head_columns, head_rows, scale_hook)
from .config import ModelConfig
from .kernels.attention_stats import AttentionStats, attention_stats, pattern_stats


def rotary_cos_sin(positions: Tensor, rot_dim: int, base: float, scaling: dict | None = None,
                   n_ctx: int = 2048) -> tuple[Tensor, Tensor]:
    """``cos, sin [..., rot_dim]`` for absolute ``positions`` (``[T]`` or ``[B, T]``; rotate-half
    layout, fp32), with transformers' RoPE scaling ``scaling`` (see :mod:`.rope`)."""
    return rope.cos_sin(positions, rot_dim, base, scaling, n_ctx)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``rot_dim`` features of ``x [B, T, H, d_head]`` (GPT-NeoX / Llama
    ``rotate_half`` convention); the remaining features pass through (partial rotary). ``cos``,
    ``sin`` are ``[T, rot_dim]`` or, per row, ``[B, T, rot_dim]``."""
    rd = cos.shape[-1]
    xr, xp = x[..., :rd], x[..., rd:]
    x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    c, s = (cos[None, :, None, :], sin[None, :, None, :]) if cos.dim() == 2 else (cos[:, :, None], sin[:, :, None])
    out = (xr.float() * c + rotated.float() * s).to(x.dtype)
    return torch.cat([out, xp], dim=-1)


class Attention(Mixer):
    """Causal multi-head softmax attention with optional rotary and grouped-query attention.

    The state is a KV cache ``{"k", "v": [B, H_kv, S, d_head]}``. The explicit path computes
    scores and pattern (so their hooks see them); PyTorch's fused ``scaled_dot_product_attention``
    runs only when no hook observes ``hook_attn_scores`` or ``hook_pattern``.

    Protocol: the groups are the query heads (per-group output ``hook_z``); "zero" / "mean"
    ablations set ``hook_z[:, :, h]``, "uniform" sets the head's finite logits at
    ``hook_attn_scores`` to 0 (Wu et al. 2024's masking: ``A[i, j] = 1/(i+1)``; for FoX the forget
    bias is part of the scores, so it goes too). The OV circuit is exact: ``W_V^h`` = rows of ``v``
    of the kv head query head h reads (``h // (H / n_kv)``), ``W_O^h`` = head h's columns of ``o``.
    """

    HOOKS = (
        HookSpec("q_norm.hook_scale", "[B, L, H, 1]", "Qwen3's query RMSNorm: sqrt(mean(q²) + eps) per head", "qk_norm"),
        HookSpec("q_norm.hook_normalized", "[B, L, H, d_head]", "normalised queries before the norm's weight", "qk_norm"),
        HookSpec("q_norm.hook_out", "[B, L, H, d_head]", "normalised queries (the same tensor as hook_q)", "qk_norm"),
        HookSpec("hook_q", "[B, L, H, d_head]", "queries (before rotary; after q_norm where there is one)"),
        HookSpec("k_norm.hook_scale", "[B, L, H_kv, 1]", "Qwen3's key RMSNorm: sqrt(mean(k²) + eps) per head", "qk_norm"),
        HookSpec("k_norm.hook_normalized", "[B, L, H_kv, d_head]", "normalised keys before the norm's weight", "qk_norm"),
        HookSpec("k_norm.hook_out", "[B, L, H_kv, d_head]", "normalised keys (the same tensor as hook_k)", "qk_norm"),
        HookSpec("hook_k", "[B, L, H_kv, d_head]", "keys (before rotary; after k_norm where there is one)"),
        HookSpec("hook_v", "[B, L, H_kv, d_head]", "values"),
        HookSpec("hook_rot_q", "[B, L, H, d_head]", "queries after rotary", "rotary"),
        HookSpec("hook_rot_k", "[B, L, H_kv, d_head]", "keys after rotary", "rotary"),
        HookSpec("hook_attn_scores", "[B, H, L, L]", "scaled (soft-capped) logits incl. FoX's forget bias, masked "
                 "entries (future, outside a sliding window, padding) -inf"),
        HookSpec("hook_pattern", "[B, H, L, L]", "softmax attention pattern"),
        HookSpec("hook_z", "[B, L, H, d_head]", "per-head output before o (per-group output)"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    BACKENDS = ("triton", "chunked", "ref")  # of attention_stats (forward uses PyTorch's SDPA)
    whole_sequence_modes = ()  # the KV cache carries every key: all ablations work in step/stream
    is_softmax = True
    handles_padding = True
    state_spec = StateSpec(None, "k, v [B, H_kv, S, d_head] (KV cache)",
                           "the keys and values each chunk wrote to the KV cache, per query head")
    lrp = LRPRules(uniform=("hook_q / 4, hook_k / 4, hook_v / 2: softmax(q·k)·v",),
                   note="AttnLRP (Achtibat et al. 2024, lxt's efficient rules); cp-lrp detaches hook_q, hook_k",
                   method="attnlrp", family="attention")

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.window = cfg.window(layer)  # keys a query reads, itself included (None: all earlier keys)
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else 1 / math.sqrt(self.d_head)
        self.softcap = cfg.attn_softcap
        self.padding: Padding | None = None  # set by SeqModel.forward(tokens, attention_mask) for one run
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's features
            self.q_norm = RMSNorm(self.d_head, cfg.norm_eps)
            self.k_norm = RMSNorm(self.d_head, cfg.norm_eps)
        self.q = nn.Linear(cfg.d_model, self.n_heads * self.d_head, bias=cfg.attn_bias)
        self.k = nn.Linear(cfg.d_model, self.n_kv * self.d_head, bias=cfg.attn_bias)
        self.v = nn.Linear(cfg.d_model, self.n_kv * self.d_head, bias=cfg.attn_bias)
        self.o = nn.Linear(self.n_heads * self.d_head, cfg.d_model, bias=cfg.attn_out_bias)
        self.rotary = cfg.positions == "rotary"
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        if self.rotary:
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    # -- protocol --------------------------------------------------------------------------------
    def summary(self) -> dict:
        """The base fields plus what a real checkpoint adds, where set (RoPE scaling, window, caps)."""
        cfg, out = self.cfg, super().summary()
        out.update(n_kv_heads=cfg.kv_heads, d_head=cfg.head_dim)  # resolved defaults
        extra = dict(rope_scaling=rope.rope_type(cfg.rope_scaling) if cfg.rope_scaling else None,
                     sliding_window=self.window, qk_norm=cfg.qk_norm or None, attn_softcap=self.softcap)
        return {**out, **{k: v for k, v in extra.items() if v is not None}}

    @property
    def groups(self) -> Groups:
        return Groups(self.n_heads, self.n_heads, "head")

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        """Zero and mean at hook_z; uniform sets the heads' finite logits to 0 at hook_attn_scores."""
        if mode != "uniform":
            return [("hook_z", site.constant_edit(mode))]

        def flatten(s: Tensor, hook) -> Tensor:  # Wu et al.: pre-softmax logits set to 0
            out = s.clone()
            sub = out[:, site.units]
            out[:, site.units] = torch.where(torch.isfinite(sub), torch.zeros_like(sub), sub)
            return out
        return [("hook_attn_scores", flatten)]

    def ov_factors(self) -> OVFactors:
        W_V = head_rows(self.v.weight, self.n_kv).repeat_interleave(self.n_heads // self.n_kv, 0)
        return OVFactors(W_V, head_columns(self.o.weight, self.n_heads), "attention",
                         "exact: W_V^h W_O^h (GQA: kv head h // (H / n_kv)); value bias and norms excluded")

    def state_view(self, layer_state: dict[str, Tensor], new: int, heads: int) -> Tensor:
        """``[B, H, G]``: the last ``new`` cached keys and values of every query head."""
        k, v = layer_state["k"], layer_state["v"]
        rep = heads // k.shape[1]
        kv = torch.cat([k[:, :, -new:], v[:, :, -new:]], dim=-1)  # [B, H_kv, T, 2 dh]
        kv = kv.repeat_interleave(rep, dim=1) if rep > 1 else kv
        return kv.reshape(kv.shape[0], heads, -1)

    # -- state -----------------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        empty = torch.zeros(batch, self.n_kv, 0, self.d_head, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone()}

    # -- pieces ----------------------------------------------------------------------------------
    def project(self, x: Tensor, pos: int) -> tuple[Tensor, Tensor, Tensor]:
        """``q [B, T, H, dh]``, ``k, v [B, T, H_kv, dh]`` for ``x`` starting at position ``pos``."""
        B, T, _ = x.shape
        q, k = self.q(x).view(B, T, self.n_heads, self.d_head), self.k(x).view(B, T, self.n_kv, self.d_head)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.hook_q(q), self.hook_k(k)
        v = self.hook_v(self.v(x).view(B, T, self.n_kv, self.d_head))
        if self.rotary:
            positions = (self.padding.positions if self.padding is not None
                         else torch.arange(pos, pos + T, device=x.device))
            cos, sin = rotary_cos_sin(positions, self.cfg.rot_dim, self.cfg.rotary_base, self.cfg.rope_scaling,
                                      self.cfg.n_ctx)
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        return q, k, v

    def score_bias(self, x: Tensor, state: dict | None) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Additive logit bias ``[B, H, T, S]`` (None for plain softmax attention) and the extra
        state entries it needs. Overridden by forgetting attention."""
        return None, {}

    def expand_kv(self, t: Tensor) -> Tensor:
        """``[B, H_kv, S, dh] -> [B, H, S, dh]``: query head h reads kv head h // (H / H_kv)."""
        return t if self.n_kv == self.n_heads else t.repeat_interleave(self.n_heads // self.n_kv, dim=1)

    def causal_mask(self, T: int, S: int, device: torch.device) -> Tensor:
        """``[T, S]`` True where query i (absolute S - T + i) may read key j: j <= i and, on a
        sliding layer, i - j < window; with padding ``[B, 1, T, S]``, pad keys are left out (a pad
        query reads itself, so its row stays a distribution)."""
        qi = torch.arange(S - T, S, device=device)[:, None]
        kj = torch.arange(S, device=device)[None, :]
        mask = kj <= qi
        if self.window is not None:
            mask = mask & (qi - kj < self.window)
        if self.padding is not None and self.padding.mask.shape[1] == S:
            mask = mask & (self.padding.mask[:, None, None, :] | (kj == qi))
        return mask

    def scores(self, q: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
        """Masked, scaled (soft-capped) logits ``[B, H, T, S]`` for ``q [B, H, T, dh]``, ``k [B, H, S, dh]``."""
        T, S = q.shape[2], k.shape[2]
        s = (q @ k.transpose(-1, -2)) * self.scale
        if self.softcap is not None:  # Gemma 2: cap * tanh(s / cap), before the mask
            s = torch.tanh(s / self.softcap) * self.softcap
        if bias is not None:
            s = s + bias
        return s.masked_fill(~self.causal_mask(T, S, q.device), float("-inf"))

    @property
    def plain_causal(self) -> bool:
        """Whether the mask is the causal triangle alone (what SDPA's ``is_causal`` does)."""
        return self.window is None and self.padding is None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """``z [B, H, T, dh]``; explicit when a score/pattern hook is active or logits are
        soft-capped (SDPA cannot), fused otherwise."""
        if hook_active(self.hook_attn_scores) or hook_active(self.hook_pattern) or self.softcap is not None:
            s = self.hook_attn_scores(self.scores(q, k, bias))
            p = self.hook_pattern(torch.softmax(s.float(), dim=-1).to(q.dtype))
            return p @ v
        T, S = q.shape[2], k.shape[2]
        if bias is None and T == S and self.plain_causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        allowed = self.causal_mask(T, S, q.device)
        mask = torch.zeros(allowed.shape, device=q.device, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
        if bias is not None:
            mask = bias + mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        B, T, _ = x.shape
        q, k, v = self.project(x, pos)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H_kv, T, dh]
        if state is not None:
            k = torch.cat([state["k"], k], dim=2)
            v = torch.cat([state["v"], v], dim=2)
        bias, extra = self.score_bias(x, state)
        z = self.attend(q.transpose(1, 2), self.expand_kv(k), self.expand_kv(v), bias)
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, dh]
        out = self.hook_out(self.o(z.reshape(B, T, self.n_heads * self.d_head)))
        new_state = None if state is None else {"k": k, "v": v, **extra}
        return out, new_state

    def log_forget(self, x: Tensor) -> Tensor | None:
        """Per-head log forget gates ``[B, T, H]`` (forgetting attention); None here."""
        return None

    @torch.no_grad()
    def stats(self, x: Tensor, sink_k: int = 4, span: tuple[int, int] | Tensor | None = None,
              backend: str = "auto") -> AttentionStats:
        """Output and per-query statistics ``[B, H, L]`` (max probability, entropy, sink and span
        mass, argmax key; :func:`~seqlens.models.kernels.attention_stats`) for the normalised input
        ``x [B, L, d]``, without the L×L matrix. Hooks on q / k / v apply as in ``forward``; when a
        hook on ``hook_attn_scores`` or ``hook_pattern`` is active the explicit path runs instead,
        so its edits count (``backend == "explicit"`` in the result). ``backend="auto"`` uses the
        mixer's ``backend`` (``SeqModel.set_backend``)."""
        backend = self.backend if backend == "auto" else backend
        q, k, v = self.project(x, 0)
        q, k, v = q.transpose(1, 2), self.expand_kv(k.transpose(1, 2)), self.expand_kv(v.transpose(1, 2))
        if hook_active(self.hook_attn_scores) or hook_active(self.hook_pattern):
            bias, _ = self.score_bias(x, None)
            s = self.hook_attn_scores(self.scores(q, k, bias))
            p = self.hook_pattern(torch.softmax(s.float(), dim=-1).to(q.dtype))
            return pattern_stats(p, s, v, sink_k, span)
        log_f = self.log_forget(x)
        log_f = None if log_f is None else log_f.transpose(1, 2)
        return attention_stats(q, k, v, log_f, sink_k, span, self.scale, backend, self.window, self.softcap)

    @torch.no_grad()
    def pattern(self, x: Tensor) -> Tensor:
        """Softmax attention pattern ``[B, H, L, L]`` for the normalised input ``x [B, L, d]``."""
        q, k, _ = self.project(x, 0)
        bias, _ = self.score_bias(x, None)
        k = self.expand_kv(k.transpose(1, 2))
        return torch.softmax(self.scores(q.transpose(1, 2), k, bias).float(), dim=-1)


class ForgettingAttention(Attention):
    """FoX attention: logits ``q_i·k_j/√d + c_i − c_j`` with ``c_t = Σ_{k≤t} log f_k`` and
    ``f_t = σ(w_f·x_t + b_f)`` per head (paper eq. 3-4). The state adds ``"c"`` ``[B, H, S]``,
    the cumulative log forget of every cached key, stored relative to the newest token so it
    stays bounded however long the stream.

    Protocol: the decay is ``f = exp(hook_log_decay)`` per head (a gate in [0, 1]); ``forget_more``
    multiplies the log decay by c (there is no state write to scale)."""

    _AFTER = [h.name for h in Attention.HOOKS].index("hook_rot_k") + 1  # the forget gate runs after projection
    HOOKS = Attention.HOOKS[:_AFTER] + (HookSpec("hook_log_decay", "[B, L, H]", "log forget gate log f_t (log decay)"),
                                        ) + Attention.HOOKS[_AFTER:]
    decay_hooks = ("hook_log_decay",)
    lrp = LRPRules(uniform=("hook_q / 4, hook_k / 4, hook_v / 2: softmax(q·k + forget bias)·v",),
                   note="AttnLRP; the forget bias enters the logits like q·k (identity rule on logsigmoid); "
                   "cp-lrp detaches it with hook_q, hook_k", method="attnlrp", family="fox")

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.forget = nn.Linear(cfg.d_model, cfg.n_heads, bias=True)
        self.hook_log_decay = HookPoint()

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_log_decay"].float().exp()  # [B, T, H]

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        if b_scale != 1.0:
            raise NotApplicableError("b_scale: attention has no state write to scale (FoX: only decay_scale applies)")
        return [("hook_log_decay", scale_hook(c))]

    def gates(self) -> list[GateSpec]:
        return [GateSpec("f", "hook_log_decay", lambda x: torch.exp(x.float()), "forget gate f = σ(w·x + b) per head")]

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        st = super().init_state(batch, device, dtype)
        st["c"] = torch.zeros(batch, self.n_heads, 0, device=device, dtype=torch.float32)
        return st

    def log_forget(self, x: Tensor) -> Tensor:
        """``log f_t = logsigmoid(w_f·x_t + b_f)`` per head, ``[B, T, H]`` float32 (hooked)."""
        return self.hook_log_decay(F.logsigmoid(self.forget(x).float()))

    def score_bias(self, x: Tensor, state: dict | None) -> tuple[Tensor, dict[str, Tensor]]:
        log_f = self.log_forget(x)  # [B, T, H]
        c_new = log_f.cumsum(dim=1).transpose(1, 2)  # [B, H, T], relative to the previous token
        c_keys = c_new if state is None else torch.cat([state["c"], c_new], dim=2)
        bias = c_new[..., :, None] - c_keys[..., None, :]  # [B, H, T, S]
        return bias.to(x.dtype), {"c": c_keys - c_new[..., -1:]}


class Transformer(SeqModel):
    """Softmax (``arch="transformer"``) or forgetting (``arch="fox"``) attention Transformer."""

    HOOKS = SeqModel.HOOKS + (HookSpec("hook_pos_embed", "[B, L, d_model]", "learned position embedding", "learned"),)

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return ForgettingAttention if cfg.arch == "fox" else Attention

    @property
    def context_limit(self) -> int | None:
        """``n_ctx`` with learned positions (the table has no row past it), else None."""
        return self.cfg.n_ctx if self.cfg.positions == "learned" else None

    def make_mixer(self, layer: int) -> nn.Module:
        return self.mixer_class(self.cfg)(self.cfg, layer)  # the layer decides its sliding window

    def build_extras(self) -> None:
        if self.cfg.positions == "learned":
            self.pos_embed = nn.Embedding(self.cfg.n_ctx, self.cfg.d_model)
            self.hook_pos_embed = HookPoint()

    def embed_tokens(self, tokens: Tensor, pos: int) -> Tensor:
        x = self.embed(tokens)
        if self.cfg.embed_scale:  # Gemma: sqrt(d_model), rounded to the activations' dtype as transformers does
            x = x * torch.tensor(self.cfg.d_model ** 0.5, dtype=x.dtype)
        x = self.hook_embed(x)
        if self.cfg.positions != "learned":
            return x
        end = pos + tokens.shape[1]
        if end > self.cfg.n_ctx:
            raise ValueError(
                f"tokens: positions up to {end} exceed the model's context n_ctx={self.cfg.n_ctx} "
                "(learned position embeddings cannot extrapolate); pass at most "
                f"{self.cfg.n_ctx - pos} more tokens")
        if self.padding is not None:  # left padding: each row counts positions from its first token
            pe = self.pos_embed(self.padding.positions)
        else:
            positions = torch.arange(pos, end, device=tokens.device)
            pe = self.pos_embed(positions)[None].expand(tokens.shape[0], -1, -1)  # TL: [B, L, d]
        return x + self.hook_pos_embed(pe)

    def unembed_resid(self, x: Tensor) -> Tensor:
        """Logits of the final normalised residual; Gemma 2 soft-caps them."""
        logits = self.unembed(x)
        cap = self.cfg.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap
