"""Gated linear attention (GLA, Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training") and retention (RetNet, Sun et al. 2023, "Retentive Network: A
Successor to Transformer for Large Language Models").

Both are linear attention with a decaying matrix-valued state per head h (GLA paper §4.1):

    S_t = diag(g_t) S_{t-1} + k_tᵀ v_t          S_t ∈ R^{d_k × d_v}
    o_t = q_t S_t                                  q_t scaled by d_k^-0.5 (as fla's kernels do)

GLA's decay is data dependent and per key dimension, ``g_t = σ(W2 W1 x_t + b)^{1/τ}``, i.e.
``log g_t = logsigmoid(W2 W1 x_t + b) / τ``, with a rank-``gate_low_rank`` projection and
``τ = gate_normalizer`` (GLA §4.1; fla's ``gk_proj``). RetNet's is a fixed scalar per head,
``γ_h = 1 − 2^(−5−h)`` (RetNet §2.2). The output is ``o_proj(RMSNorm_head(o) ⊙ SiLU(g_proj x))``:
a per-head RMS "group norm" then a swish output gate (GLA §4.4; RetNet §2.2, with fla's RMSNorm
in place of GroupNorm).

RetNet with ``positions="rotary"`` rotates q and k by the paper's ``Θ_n = e^{inθ}`` (its xPos
without the length-extrapolation scale, as torchscale does; :func:`theta_shift`); without it
(the default, and the shipped ``text-retnet`` trained before issue #16) positions come only from the
decay, which on byte-level text learned far worse (docs/architectures.md). Omitted: GLA's optional
short convolutions, feature maps and grouped key / value heads; torchscale's normalisations of the
parallel form (decay rows divided by their root sum, scores by their clamped absolute sum) are
per-row, per-head scalars that the group norm removes, so only their numerics differ.

The sequence runs through :func:`~seqlens.models.kernels.linear_attention.gated_linear_attention`
(the "chunkwise parallel form" of GLA §4.2: inside a chunk an attention-like matrix weighted by
products of gates, across chunks the state): Triton kernels on CUDA, ``gla_chunked`` on CPU;
``gla_recurrent_ref`` is their plain step-by-step twin (all in ``models/kernels/linear_attention.py``).

Hooks (``blocks.{l}.mixer.*``): ``hook_q``, ``hook_k [B, L, H, d_k]`` (q before its d_k^-0.5
scale), ``hook_v [B, L, H, d_v]``, ``hook_log_decay [B, L, H, d_k]`` (log g_t; constant log γ_h for
RetNet), RetNet with rotation: ``hook_rot_q``, ``hook_rot_k [B, L, H, d_k]`` (after Θ),
``hook_z [B, L, H, d_v]`` (per-head output before the group norm: the "z" that head
ablations edit), ``g_norm.hook_scale / hook_normalized / hook_out [B, L, H, d_v]`` (the group norm,
before / after its weight), ``hook_out_gate [B, L, value_dim]`` (SiLU(g_proj x); ``hook_gate``
before), ``hook_out [B, L, d_model]``; inside ``SeqModel.tap_states``, ``hook_state
[B, T, H, d_k, d_v]``. The machine-readable list is ``LinearAttentionMixer.HOOKS``.

Protocol: the groups are the heads (per-group output ``hook_z``; RMSNorm(0) = 0, so zeroing it
silences the head). "uniform" ablation: ``hook_z[t, h] = mean_{s≤t} v_s[h]`` (α replaced by uniform
causal weights; group norm and output gate still apply). The decay is ``g = exp(hook_log_decay)``;
``forget_more`` multiplies the log decay by c and ``hook_k`` by b_scale (what ``kᵀv`` writes). The
OV path: ``v_proj`` rows, the group norm's weight, ``o_proj`` columns of head h; the group norm's
``1/rms`` and the SiLU output gate (per-token factors) omitted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, RMSNorm, SeqModel
from .mixer import (LOG_FLOOR, AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, OVFactors,
                    StateSpec, causal_mean, head_columns, head_rows, scale_hook)
from .config import ModelConfig
from .kernels.decay_attention import DEFAULT_CHUNK, decay_attention_chunked
# the kernels live in models/kernels/linear_attention.py; re-exported here for existing imports
from .kernels.linear_attention import (GLAResult, gated_linear_attention, gla_chunked,  # noqa: F401
                                       gla_recurrent_ref, segment_decay, suffix_log_decay)

# ----------------------------------------------------------------------------- implicit attention


def gla_attention_matrix(q: Tensor, k: Tensor, log_g: Tensor, scale: float | None = None,
                         budget: int = 2**25, chunk: int | None = DEFAULT_CHUNK) -> Tensor:
    """Implicit attention (docs/methods.md §7) ``α[b, h, t, s] = Σ_i (scale·q_{t,i}) k_{s,i}
    ∏_{j=s+1..t} g_{j,i}`` (0 for s > t), ``[B, H, L, L]``, so that ``o_t = Σ_s α_{t,s} v_s``
    from an empty state. Query rows are processed in blocks so the ``[B, H, rows, L, d_k]`` decay
    stays under ``budget`` elements; the cumulative log gates ``c`` are summed in float64 so
    that ``c_t − c_s`` loses no precision over long sequences (masked before ``exp``).

    With ``chunk`` (the default) the SSD chunk split of models/kernels/decay_attention.py computes
    the same without the ``[.., L, L, d_k]`` decay (``budget`` unused); ``chunk=None`` is the
    direct row-blocked form, the reference twin."""
    B, L, H, dk = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    qs = (q * scale).to(dtype).transpose(1, 2)
    kt = k.to(dtype).transpose(1, 2)
    c = log_g.double().cumsum(1).transpose(1, 2)  # [B, H, L, d_k]
    if chunk is not None:
        return decay_attention_chunked(qs, kt, c, chunk)
    pos = torch.arange(L, device=q.device)
    causal = (pos[:, None] >= pos[None, :])[:, :, None]  # [t, s, 1]
    rows = max(1, budget // max(1, B * H * L * dk))
    out = qs.new_zeros(B, H, L, L)
    for t0 in range(0, L, rows):
        t1 = min(L, t0 + rows)
        diff = c[:, :, t0:t1, None, :] - c[:, :, None, :, :]  # Σ_{j=s+1..t} log g_j
        decay = diff.masked_fill(~causal[t0:t1], float("-inf")).to(dtype).exp()
        out[:, :, t0:t1] = torch.einsum("bhti,bhsi,bhtsi->bhts", qs[:, :, t0:t1], kt, decay)
    return out


# ----------------------------------------------------------------------------- RetNet's rotation


def retention_angles(d_k: int, device: torch.device | None = None) -> Tensor:
    """``θ [d_k]`` float64: RetNet's xPos angles as torchscale's ``RetNetRelPos`` sets them,
    ``θ_i = 10000^(−i / (d_k/2 − 1))`` for the pair ``i < d_k/2``, each repeated for both
    features of its pair (2i, 2i+1)."""
    angle = 1.0 / 10000 ** torch.linspace(0, 1, d_k // 2, dtype=torch.float64, device=device)
    return angle.repeat_interleave(2)


def theta_shift(x: Tensor, positions: Tensor) -> Tensor:
    """RetNet's ``Θ_n = e^{inθ}`` (paper §2.1; torchscale's ``theta_shift``): features (2i, 2i+1)
    of ``x [B, T, H, d_k]`` are the complex number ``x_{2i} + i x_{2i+1}``, multiplied by
    ``e^{i n θ_i}`` at position ``n = positions[t]``. Applied to q and k, ``q_n · k_m`` then
    depends on ``n − m`` only. Angles in float64 so that long positions lose no phase."""
    angles = positions.to(torch.float64)[:, None] * retention_angles(x.shape[-1], x.device)  # [T, d_k]
    cos, sin = (f(angles).to(x.dtype)[None, :, None, :] for f in (torch.cos, torch.sin))
    swapped = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)  # i·z per pair
    return x * cos + swapped * sin


# ----------------------------------------------------------------------------- mixers


class LinearAttentionMixer(Mixer):
    """Shared body of GLA and retention: projections, chunked recurrence, group norm, output
    gate. Subclasses define ``log_decay(x) -> [B, T, H, d_k]`` (float32, ≤ 0). State:
    ``{"S": [B, H, d_k, d_v]}`` in float32."""

    HOOKS = (
        HookSpec("hook_q", "[B, L, H, d_k]", "queries (before the d_k^-0.5 scale)"),
        HookSpec("hook_k", "[B, L, H, d_k]", "keys (write)"),
        HookSpec("hook_v", "[B, L, H, d_v]", "values (the value written)"),
        HookSpec("hook_log_decay", "[B, L, H, d_k]", "log decay log g_t (RetNet: constant log γ_h)"),
        HookSpec("hook_state", "[B, T, H, d_k, d_v]", "state S after the tapped positions", "tap_states"),
        HookSpec("hook_z", "[B, L, H, d_v]", "per-head output q_t S_t before the group norm (per-group output)"),
        HookSpec("hook_out_gate", "[B, L, value_dim]", "output gate SiLU(g_proj x)"),
        HookSpec("g_norm.hook_scale", "[B, L, H, 1]", "group norm: per-head rms of hook_z"),
        HookSpec("g_norm.hook_normalized", "[B, L, H, d_v]", "group norm: hook_z / rms, before its weight"),
        HookSpec("g_norm.hook_out", "[B, L, H, d_v]", "group norm output (after its weight)"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    BACKENDS = ("triton", "chunked", "ref")
    supports_state_taps = True
    state_key = "S"
    state_spec = StateSpec("S", "[B, H, d_k, d_v]", "S [B, H, d_k, d_v], the mixer's heads", linear=True)
    decay_hooks = ("hook_log_decay",)
    pad_write_hooks = ("hook_k",)  # left padding: k_t^T v_t is the write
    memory_hook = "hook_z"
    lrp = LRPRules(detach=("hook_log_decay", "g_norm.hook_scale"),
                   uniform=("hook_q / 4, hook_k / 4, hook_v / 2: (q·k)·v", "g_norm.hook_out * hook_out_gate"),
                   note="linear attention as AttnLRP without the softmax; decays and the group norm's scale "
                   "detached, SiLU output gate by the identity rule and its product uniform (as MambaLRP)",
                   method="lrp", family="linear_attention")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        self.key_dim, self.value_dim = cfg.key_dim, cfg.value_dim
        self.d_k, self.d_v = cfg.key_dim // cfg.n_heads, cfg.value_dim // cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(cfg.d_model, self.value_dim, bias=False)
        self.g_norm = RMSNorm(self.d_v, cfg.norm_eps)  # per-head "group norm" over d_v
        self.o_proj = nn.Linear(self.value_dim, cfg.d_model, bias=False)
        for name in ("q", "k", "v", "log_decay", "z", "out_gate", "state"):
            setattr(self, f"hook_{name}", HookPoint())
        self.chunk_size = 16  # of the CPU path (the Triton kernels' chunks are fixed); fastest there

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"S": torch.zeros(batch, self.n_heads, self.d_k, self.d_v, device=device, dtype=torch.float32)}

    def log_decay(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- protocol (module docstring) ---------------------------------------------------------------
    @property
    def groups(self) -> Groups:
        return Groups(self.n_heads, self.n_heads, "head")

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        if mode != "uniform":
            return [("hook_z", site.constant_edit(mode))]
        uniform = lambda z, hook: site.put(z, causal_mean(site.take(site.seen["v"])))  # noqa: E731
        return [("hook_v", lambda v, hook: site.capture("v", v)), ("hook_z", uniform)]

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_log_decay"].float().exp()  # [B, T, H, d_k]

    def log_chunk_decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_log_decay"].double().clamp_min(LOG_FLOOR).sum(1)[..., None]  # [B, H, d_k, 1]

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        return [("hook_log_decay", scale_hook(c)), ("hook_k", scale_hook(b_scale))]

    def gates(self) -> list[GateSpec]:
        return [GateSpec("g", "hook_log_decay", lambda x: torch.exp(x.float()),
                         "decay g = exp(log g) per head and key dimension")]

    def ov_factors(self) -> OVFactors:
        gain = self.g_norm.weight.repeat(self.n_heads)  # group-norm weight [d_v] is shared by the heads
        return OVFactors(head_rows(self.v_proj.weight, self.n_heads),
                         head_columns(self.o_proj.weight, self.n_heads, gain), "linear_attention",
                         "linearised: v_proj rows, group-norm weight, o_proj columns of head h; group-norm 1/rms and "
                         "SiLU output gate (per-token factors) omitted")

    @property
    def scale(self) -> float:
        return self.d_k ** -0.5

    # -- pieces ----------------------------------------------------------------------------------
    def project(self, x: Tensor, pos: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q, k, log_g [B, T, H, d_k]`` and ``v [B, T, H, d_v]`` of ``x`` starting at absolute
        position ``pos`` (RetNet's rotation reads it), each through its hook."""
        B, T, _ = x.shape
        H = self.n_heads
        q = self.hook_q(self.q_proj(x).view(B, T, H, self.d_k))
        k = self.hook_k(self.k_proj(x).view(B, T, H, self.d_k))
        v = self.hook_v(self.v_proj(x).view(B, T, H, self.d_v))
        return q, k, v, self.hook_log_decay(self.log_decay(x))

    def output(self, x: Tensor, o: Tensor) -> Tensor:
        """``o_proj(RMSNorm_head(o) ⊙ SiLU(g_proj x))`` for per-head outputs ``o [B, T, H, d_v]``."""
        B, T, _ = x.shape
        gate = self.hook_out_gate(F.silu(self.g_proj(x)))
        y = self.g_norm(o).reshape(B, T, self.value_dim) * gate
        return self.hook_out(self.o_proj(y))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        T = x.shape[1]
        taps = self.local_taps(pos, T)
        self.check_tap_range(T, state)
        q, k, v, log_g = self.project(x, pos)
        # log_g is hook_log_decay's output (also for RetNet), so edits made by hooks take effect
        res = gated_linear_attention(q, k, v, g=log_g, scale=self.scale, tap_positions=taps,
                                     initial_state=None if state is None else state["S"],
                                     backend=self.backend, chunk_size=self.chunk_size)
        if res.taps is not None:
            self.hook_state(res.taps)
        o = self.hook_z(res.o.to(x.dtype))
        new_state = None if state is None else {"S": res.final_state.float()}
        return self.output(x, o), new_state

    # -- implicit attention (docs/methods.md §7) ------------------------------------------------------
    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention per head ``[B, H, L, L]``: ``α_{t,s} = Σ_i q_{t,i} k_{s,i}
        ∏_{j=s+1..t} g_{j,i}`` with q including its d_k^-0.5 scale; ``hook_z[t] = Σ_s α_{t,s}
        v_s``. The group norm and output gate are per-token factors outside α."""
        q, k, _, log_g = self.project(x)
        return gla_attention_matrix(q, k, log_g, scale=self.scale, budget=budget)


class GatedLinearAttention(LinearAttentionMixer):
    """GLA: data-dependent per-key-dimension decay ``log g_t = logsigmoid(W2 W1 x_t + b) / τ``
    (GLA §4.1; ``gk_proj`` = [W1: d_model→gate_low_rank, W2: gate_low_rank→key_dim with bias])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.gk_proj = nn.Sequential(nn.Linear(cfg.d_model, cfg.gate_low_rank, bias=False),
                                     nn.Linear(cfg.gate_low_rank, self.key_dim, bias=True))
        self.gate_normalizer = cfg.gate_normalizer

    def log_decay(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        logit = self.gk_proj(x).float().view(B, T, self.n_heads, self.d_k)
        return F.logsigmoid(logit) / self.gate_normalizer


class Retention(LinearAttentionMixer):
    """RetNet's multi-scale retention: a fixed decay ``γ_h = 1 − 2^(−5−h)`` per head (paper
    §2.2), shared by every key dimension, so ``α_{t,s} = γ_h^{t−s} q_t·k_s``; with
    ``positions="rotary"`` q and k are rotated first (the paper's xPos ``Θ``, :func:`theta_shift`),
    so ``α_{t,s} = γ_h^{t−s} Re[Σ_i q_{t,i} k̄_{s,i} e^{i(t−s)θ_i}]`` and the state holds the rotated
    keys, ``S_t = Σ_s γ_h^{t−s} (Θ_s k_s)ᵀ v_s``. Without it positions enter only through the decay
    (the shipped ``text-retnet`` before issue #16's fix)."""

    HOOKS = LinearAttentionMixer.HOOKS[:4] + (
        HookSpec("hook_rot_q", "[B, L, H, d_k]", "queries after the xPos rotation Θ", "rotary"),
        HookSpec("hook_rot_k", "[B, L, H, d_k]", "keys after the xPos rotation Θ", "rotary"),
    ) + LinearAttentionMixer.HOOKS[4:]

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rotary = cfg.positions == "rotary"
        if self.rotary:
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()

    def project(self, x: Tensor, pos: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As the base class; with the rotation, q and k leave rotated (``hook_rot_q`` /
        ``hook_rot_k``). Only ``t − s`` matters, so left padding (real tokens shifted) and
        streaming (``pos`` carried) agree with one plain forward."""
        q, k, v, log_g = super().project(x, pos)
        if self.rotary:
            positions = torch.arange(pos, pos + x.shape[1], device=x.device)
            q, k = self.hook_rot_q(theta_shift(q, positions)), self.hook_rot_k(theta_shift(k, positions))
        return q, k, v, log_g

    def gates(self) -> list[GateSpec]:
        return [GateSpec("γ (constant)", "hook_log_decay", lambda x: torch.exp(x.float()),
                         "constant decay γ_h = 1 − 2^(−5−h), the same for every token")]

    def gate_constants(self) -> list[float]:
        return self.gamma.tolist()

    @property
    def gamma(self) -> Tensor:
        """``[H]`` float64 decay rates ``γ_h = 1 − 2^(−5−h)``."""
        return 1 - self._forget_rate()

    def _forget_rate(self) -> Tensor:
        return torch.exp2(-5.0 - torch.arange(self.n_heads, dtype=torch.float64))  # 1 − γ_h

    def log_decay(self, x: Tensor) -> Tensor:
        """``log γ_h`` (log1p keeps it exact for γ near 1) for every token and key dimension, in
        float32 (float64 for a float64 model: γ^t over long distances keeps its precision)."""
        B, T, _ = x.shape
        dtype = torch.promote_types(x.dtype, torch.float32)
        log_gamma = torch.log1p(-self._forget_rate()).to(device=x.device, dtype=dtype)
        return log_gamma.view(1, 1, -1, 1).expand(B, T, self.n_heads, self.d_k).contiguous()


class GLA(SeqModel):
    """GLA (``arch="gla"``) or RetNet (``arch="retnet"``) language model: Llama-style blocks of
    norm → linear-attention mixer → norm → MLP."""

    has_mlp = True

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return Retention if cfg.arch == "retnet" else GatedLinearAttention
