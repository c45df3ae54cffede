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

Omitted: RetNet's xPos / rotary (positions come only from the decay), GLA's optional short
convolutions, feature maps and grouped key / value heads.

The sequence is computed in chunks (``gla_chunked``, the "chunkwise parallel form" of GLA §4.2):
inside a chunk an attention-like matrix weighted by products of gates (exp of summed log gates),
across chunks the state. ``gla_recurrent_ref`` is its plain step-by-step twin.

Hooks (``blocks.{l}.mixer.*``): ``hook_q``, ``hook_k [B, L, H, d_k]`` (q before its d_k^-0.5
scale), ``hook_v [B, L, H, d_v]``, ``hook_log_decay [B, L, H, d_k]`` (log g_t; constant log γ_h for
RetNet), ``hook_z [B, L, H, d_v]`` (per-head output before the group norm: the "z" that head
ablations edit), ``g_norm.hook_normalized [B, L, H, d_v]``, ``hook_gate [B, L, value_dim]``
(SiLU(g_proj x)), ``hook_out [B, L, d_model]``; inside ``SeqModel.tap_states``, ``hook_state
[B, T, H, d_k, d_v]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, RMSNorm, SeqModel
from .config import ModelConfig


class GLAResult(NamedTuple):
    o: Tensor  # [B, T, H, d_v]
    final_state: Tensor  # [B, H, d_k, d_v]
    taps: Tensor | None  # [B, n_taps, H, d_k, d_v], states right after the tapped positions


# ----------------------------------------------------------------------------- reference


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None,
             scale: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes; return ``q·scale, k, log_g [B, H, T, d_k]``, ``v [B, H, T, d_v]`` and the
    initial state ``[B, H, d_k, d_v]`` in a common dtype of at least float32."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    if k.shape != q.shape or log_g.shape != q.shape or v.shape[:3] != (B, T, H):
        raise ValueError(f"q, k, log_g: expected equal shapes [B, T, H, d_k] and v [B, T, H, d_v], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(log_g.shape)}, {list(v.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, dk, dv):
        raise ValueError(f"initial_state: expected shape {[B, H, dk, dv]}, got {list(initial_state.shape)}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, log_g = (t.to(dtype).transpose(1, 2) for t in (q * scale, k, v, log_g))
    S = q.new_zeros(B, H, dk, dv) if initial_state is None else initial_state.to(dtype)
    return q, k, v, log_g, S


def gla_recurrent_ref(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None = None,
                      scale: float | None = None, taps: Tensor | None = None) -> GLAResult:
    """Plain step loop of ``S_t = diag(g_t) S_{t-1} + k_tᵀ v_t``, ``o_t = (scale·q_t) S_t``.

    ``q, k, log_g [B, T, H, d_k]``, ``v [B, T, H, d_v]``, ``initial_state [B, H, d_k, d_v]`` (zeros
    when None), ``scale`` (default d_k^-0.5), ``taps``: positions whose states to return. The
    reference ``gla_chunked`` must equal (same arguments, plus its chunk size).
    """
    q, k, v, log_g, S = _prepare(q, k, v, log_g, initial_state, scale)
    outs, states = [], []
    for t in range(q.shape[2]):
        S = log_g[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhi,bhij->bhj", q[:, :, t], S))
        states.append(S)
    o = torch.stack(outs, 1)
    tapped = None if taps is None else torch.stack([states[int(p)] for p in taps], 1)
    return GLAResult(o, S, tapped)


# ----------------------------------------------------------------------------- chunked form


def segment_decay(log_g: Tensor) -> Tensor:
    """``D[..., t, s, i] = ∏_{j=s+1..t} g_{j,i} = exp(Σ_{j=s+1..t} log g_{j,i})`` for ``s ≤ t``, 0
    above the diagonal: ``[..., C, C, d_k]`` from ``log_g [..., C, d_k]``.

    Each exponent is summed directly (a suffix sum over the row's ``log g_j, j ≤ t``) rather than
    as a difference ``b_t − b_s`` of prefix sums: all terms are ≤ 0, so there is no cancellation
    and strong decays keep full fp32 precision. The mask goes on before ``exp``.
    """
    C = log_g.shape[-2]
    pos = torch.arange(C, device=log_g.device)
    causal = (pos[None, :] <= pos[:, None])[:, :, None]  # [t, j, 1]
    rows = log_g[..., None, :, :].masked_fill(~causal, 0.0)  # row t keeps log g_j for j ≤ t
    from_s = rows.flip(-2).cumsum(-2).flip(-2)  # Σ_{j ≥ s}
    after_s = F.pad(from_s[..., 1:, :], (0, 0, 0, 1))  # Σ_{j > s}
    return after_s.masked_fill(~causal, float("-inf")).exp()


def suffix_log_decay(log_g: Tensor) -> Tensor:
    """``Σ_{j=s+1..C} log g_j`` for every ``s`` of a chunk ``log_g [..., C, d_k]`` (same shape),
    summed directly for the same reason as :func:`segment_decay`."""
    from_s = log_g.flip(-2).cumsum(-2).flip(-2)
    return F.pad(from_s[..., 1:, :], (0, 0, 0, 1))


def _chunk(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, S: Tensor,
           taps: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk of the chunkwise form (GLA §4.2), inputs ``[B, H, C, d]``, state ``S``.

    With ``b_t = Σ_{j≤t} log g_j`` (chunk-local) and ``D`` from :func:`segment_decay`:
    ``o_t = (q_t ⊙ e^{b_t}) S + Σ_{s≤t} (Σ_i q_{t,i} k_{s,i} D_{t,s,i}) v_s`` and
    ``S' = diag(e^{b_C}) S + Σ_s (k_s ⊙ e^{Σ_{j>s} log g_j})ᵀ v_s``. Every exponent is ≤ 0, so
    nothing overflows however strong the decay. The states after the ``taps`` (chunk-local) reuse
    rows of ``D`` instead of materialising every step's state."""
    b = log_g.cumsum(2)
    decay = segment_decay(log_g)  # [B, H, C, C, d_k]
    A = torch.einsum("bhti,bhsi,bhtsi->bhts", q, k, decay)
    o = (q * b.exp()) @ S + A @ v
    tapped = None
    if taps is not None:
        carried = b[:, :, taps, :, None].exp() * S[:, :, None]
        tapped = carried + torch.einsum("bhnsi,bhsi,bhsj->bhnij", decay[:, :, taps], k, v)
    k_to_end = k * suffix_log_decay(log_g).exp()
    S = b[:, :, -1, :, None].exp() * S + k_to_end.transpose(-1, -2) @ v
    return o, S, tapped


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, initial_state: Tensor | None = None,
                scale: float | None = None, taps: Tensor | None = None, chunk_size: int = 16) -> GLAResult:
    """Chunkwise-parallel gated linear attention; equals :func:`gla_recurrent_ref` (same
    arguments). Memory is O(B·H·C²·d_k) for the intra-chunk decay, never O(T·d_k·d_v); ``taps``
    (positions in ``[0, T)``) return the states right after those positions. The chunk loop
    carries the state; per token it costs C·d_k (intra-chunk decay) plus d_k·d_v (state), so
    small chunks (16) are fastest in PyTorch."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    q, k, v, log_g, S = _prepare(q, k, v, log_g, initial_state, scale)
    if q.shape[2] == 0:
        return GLAResult(v.transpose(1, 2), S, None)
    outs, tapped = [], []
    for start in range(0, q.shape[2], chunk_size):
        sl = slice(start, start + chunk_size)
        local = None
        if taps is not None:
            local = taps[(taps >= start) & (taps < start + chunk_size)] - start
            local = local if local.numel() else None
        o, S, st = _chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], log_g[:, :, sl], S, local)
        outs.append(o)
        if st is not None:
            tapped.append(st)
    o = torch.cat(outs, 2).transpose(1, 2)
    return GLAResult(o, S, torch.cat(tapped, 2).transpose(1, 2) if tapped else None)


def gla_attention_matrix(q: Tensor, k: Tensor, log_g: Tensor, scale: float | None = None,
                         budget: int = 2**25) -> Tensor:
    """Implicit attention (METHODS.md §7) ``α[b, h, t, s] = Σ_i (scale·q_{t,i}) k_{s,i}
    ∏_{j=s+1..t} g_{j,i}`` (0 for s > t), ``[B, H, L, L]``, so that ``o_t = Σ_s α_{t,s} v_s``
    from an empty state. Query rows are processed in blocks so the ``[B, H, rows, L, d_k]`` decay
    stays under ``budget`` elements; the cumulative log gates ``c`` are summed in float64 so
    that ``c_t − c_s`` loses no precision over long sequences (masked before ``exp``)."""
    B, L, H, dk = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = dk ** -0.5 if scale is None else scale
    qs = (q * scale).to(dtype).transpose(1, 2)
    kt = k.to(dtype).transpose(1, 2)
    c = log_g.double().cumsum(1).transpose(1, 2)  # [B, H, L, d_k]
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


# ----------------------------------------------------------------------------- mixers


class LinearAttentionMixer(Mixer):
    """Shared body of GLA and retention: projections, chunked recurrence, group norm, output
    gate. Subclasses define ``log_decay(x) -> [B, T, H, d_k]`` (float32, ≤ 0). State:
    ``{"S": [B, H, d_k, d_v]}`` in float32."""

    supports_state_taps = True
    state_key = "S"

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
        for name in ("q", "k", "v", "log_decay", "z", "gate", "state"):
            setattr(self, f"hook_{name}", HookPoint())
        self.chunk_size = 16  # fastest on CPU: the intra-chunk decay costs C·d_k per token

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"S": torch.zeros(batch, self.n_heads, self.d_k, self.d_v, device=device, dtype=torch.float32)}

    def log_decay(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def scale(self) -> float:
        return self.d_k ** -0.5

    # -- pieces ----------------------------------------------------------------------------------
    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q, k, log_g [B, T, H, d_k]`` and ``v [B, T, H, d_v]``, each through its hook."""
        B, T, _ = x.shape
        H = self.n_heads
        q = self.hook_q(self.q_proj(x).view(B, T, H, self.d_k))
        k = self.hook_k(self.k_proj(x).view(B, T, H, self.d_k))
        v = self.hook_v(self.v_proj(x).view(B, T, H, self.d_v))
        return q, k, v, self.hook_log_decay(self.log_decay(x))

    def output(self, x: Tensor, o: Tensor) -> Tensor:
        """``o_proj(RMSNorm_head(o) ⊙ SiLU(g_proj x))`` for per-head outputs ``o [B, T, H, d_v]``."""
        B, T, _ = x.shape
        gate = self.hook_gate(F.silu(self.g_proj(x)))
        y = self.g_norm(o).reshape(B, T, self.value_dim) * gate
        return self.hook_out(self.o_proj(y))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        T = x.shape[1]
        taps = self.local_taps(pos, T)
        self.check_tap_range(T, state)
        q, k, v, log_g = self.project(x)
        res = gla_chunked(q, k, v, log_g, None if state is None else state["S"], scale=self.scale,
                          taps=taps, chunk_size=self.chunk_size)
        if res.taps is not None:
            self.hook_state(res.taps)
        o = self.hook_z(res.o.to(x.dtype))
        new_state = None if state is None else {"S": res.final_state.float()}
        return self.output(x, o), new_state

    # -- implicit attention (METHODS.md §7) ------------------------------------------------------
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
    §2.2), shared by every key dimension, so ``α_{t,s} = γ_h^{t−s} q_t·k_s``. xPos is omitted:
    positions enter only through the decay."""

    @property
    def gamma(self) -> Tensor:
        """``[H]`` float64 decay rates ``γ_h = 1 − 2^(−5−h)``."""
        return 1 - self._forget_rate()

    def _forget_rate(self) -> Tensor:
        return torch.exp2(-5.0 - torch.arange(self.n_heads, dtype=torch.float64))  # 1 − γ_h

    def log_decay(self, x: Tensor) -> Tensor:
        """``log γ_h`` (log1p keeps it exact for γ near 1) for every token and key dimension."""
        B, T, _ = x.shape
        log_gamma = torch.log1p(-self._forget_rate()).to(device=x.device, dtype=torch.float32)
        return log_gamma.view(1, 1, -1, 1).expand(B, T, self.n_heads, self.d_k).contiguous()


class GLA(SeqModel):
    """GLA (``arch="gla"``) or RetNet (``arch="retnet"``) language model: Llama-style blocks of
    norm → linear-attention mixer → norm → MLP."""

    has_mlp = True

    def make_mixer(self, layer: int) -> Mixer:
        return Retention(self.cfg) if self.cfg.arch == "retnet" else GatedLinearAttention(self.cfg)
