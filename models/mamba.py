"""Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

Block: ``x + out_proj(ssm(SiLU(conv1d(W_x h))) * SiLU(W_z h))`` with ``h = RMSNorm(x)`` and the
selective scan (paper Alg. 2, ZOH for A and Euler for B as in the official code):

    Δ_t = softplus(dt_proj(x_proj(u_t)[:dt_rank]))          [B, L, D]
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,   A = −exp(A_log)   [B, D, N]
    y_t = C_t · h_t + D ⊙ u_t

Parameter names follow Hugging Face's ``MambaMixer`` (``in_proj conv1d x_proj dt_proj A_log D
out_proj``) so checkpoints convert one-to-one.

Hooks (``blocks.{l}.mixer.*``; ``MambaMixer.HOOKS``): ``hook_x [B, L, D]`` (x branch before the
conv; ``hook_in`` before, renamed because TL 4's Mamba ``hook_in`` is the d_model-sized mixer
input), ``hook_conv [B, L, D]`` (SSM input u = SiLU(conv)), ``hook_delta [B, L, D]`` (after
softplus), ``hook_B``, ``hook_C [B, L, N]``, ``hook_z [B, L, D]`` (scan output incl. the D skip,
the per-group output; ``hook_ssm_out`` before), ``hook_out_gate [B, L, D]`` (SiLU(z) of the paper's
gate branch; ``hook_gate`` before), ``hook_out [B, L, d_model]``; inside ``SeqModel.tap_states``,
``hook_state [B, T, D, N]``.

Protocol (``MambaMixer``): "heads" are ``cfg.n_groups`` contiguous channel groups of d_inner.
Zero / mean ablations act on the group's channels of ``hook_z`` (the scan state is not touched);
"uniform" replaces α by uniform causal weights, ``z[t, d] = mean_{s≤t} u[s, d] + D_d u[t, d]``
(``u`` = ``hook_conv``, the D skip kept). The decay is ``exp(Δ_t A)`` per state element (from
``hook_delta``); ``forget_more`` scales Δ by c and B by b_scale / c (Stuffed Mamba's A multiplier).
The OV path is linearised: x-branch rows of ``in_proj`` of the group, the depthwise conv replaced by
its DC gain ``Σ_k w_{d,k}`` (keeps its sign), SiLU(conv) and the scan taken as identity (the scan's
mixing is α, the D skip its diagonal), the SiLU gate omitted, then the group's ``out_proj`` columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel
from .mixer import (AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, OVFactors, StateSpec,
                    causal_mean, channel_groups, head_columns, head_rows, scale_hook)
from .config import ModelConfig
from .kernels.decay_attention import DEFAULT_CHUNK, decay_attention_chunked
from .kernels.selective_scan import selective_scan


class MambaMixer(Mixer):
    """The Mamba-1 sequence mixer. State: ``{"conv": [B, D, d_conv - 1]`` (last pre-conv
    inputs), ``"ssm": [B, D, N]}``."""

    HOOKS = (
        HookSpec("hook_x", "[B, L, D]", "x branch of in_proj, before the conv"),
        HookSpec("hook_conv", "[B, L, D]", "SSM input u = SiLU(conv(x)) (the value written)"),
        HookSpec("hook_delta", "[B, L, D]", "step size Δ after softplus (decay exp(ΔA))"),
        HookSpec("hook_B", "[B, L, N]", "input matrix B_t (write)"),
        HookSpec("hook_C", "[B, L, N]", "output matrix C_t (read)"),
        HookSpec("hook_out_gate", "[B, L, D]", "output gate SiLU(z branch)"),
        HookSpec("hook_state", "[B, T, D, N]", "SSM state after the tapped positions", "tap_states"),
        HookSpec("hook_z", "[B, L, D]", "scan output incl. the D skip, before the gate (per-group output)"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    BACKENDS = ("triton", "chunked", "ref")
    supports_state_taps = True
    state_key = "ssm"
    state_spec = StateSpec("ssm", "[B, D, N]", "ssm [B, d_inner, d_state], heads = cfg.n_groups "
                           "channel groups of d_inner", linear=True)
    decay_hooks = ("hook_delta",)
    pad_write_hooks = ("hook_x", "hook_conv")  # left padding: the conv's history and the value written
    memory_hook = "hook_z"
    lrp = LRPRules(detach=("hook_delta", "hook_B", "hook_C"), uniform=("hook_z * hook_out_gate",),
                   note="MambaLRP (Jafari et al. 2024): scan linear in u given Δ, B, C (detached); SiLU by the "
                   "identity rule; gate product uniform", method="mambalrp", family="mamba")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank_
        self.d_inner, self.d_state, self.dt_rank = D, N, R
        self.in_proj = nn.Linear(cfg.d_model, 2 * D, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(D, D, cfg.d_conv, groups=D, padding=0, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        # S4D-real initialisation A_n = -(n + 1), as in the paper (sec. 3.6)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))
        self.D = nn.Parameter(torch.ones(D))
        self.out_proj = nn.Linear(D, cfg.d_model, bias=cfg.proj_bias)
        for name in ("x", "conv", "delta", "B", "C", "z", "out_gate", "state"):
            setattr(self, f"hook_{name}", HookPoint())
        self.init_dt()

    @property
    def scan_backend(self) -> str:
        """Former name of :attr:`backend` (kept for existing callers)."""
        return self.backend

    @scan_backend.setter
    def scan_backend(self, value: str) -> None:
        self.set_backend(value)

    @torch.no_grad()
    def init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Official Mamba initialisation of the step size (paper sec. 3.6 / mamba_simple.py):
        ``softplus(dt_proj.bias)`` log-uniform in ``[dt_min, dt_max]`` and ``dt_proj.weight``
        uniform in ``±dt_rank^-½``. PyTorch's default bias init gives Δ ≈ 0.5-1, i.e. a state that
        forgets within a few tokens, and small models then fail to learn recall or copying."""
        self.dt_proj.weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        u = torch.rand(self.d_inner)
        dt = torch.exp(u * (torch.log(torch.tensor(dt_max)) - torch.log(torch.tensor(dt_min)))
                       + torch.log(torch.tensor(dt_min))).clamp_min(dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "conv": torch.zeros(batch, self.d_inner, self.cfg.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        }

    # -- pieces ----------------------------------------------------------------------------------
    def conv(self, xs: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv of ``xs [B, D, T]`` continuing from the last ``d_conv - 1``
        inputs (zeros at the start); returns ``(conv output [B, D, T], new conv state)``."""
        B, D, T = xs.shape
        k = self.cfg.d_conv - 1
        if conv_state is None:
            conv_state = xs.new_zeros(B, D, k)
        full = torch.cat([conv_state, xs], dim=-1)
        return self.conv1d(full), full[..., full.shape[-1] - k:]

    def ssm_inputs(self, x: Tensor, conv_state: Tensor | None) -> dict[str, Tensor]:
        """Everything the scan needs for the normalised input ``x [B, T, d_model]``, each with its
        hook applied: ``u, delta, gate [B, T, D]``, ``B, C [B, T, N]`` and the new conv state."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = self.hook_x(xs)
        conv_out, new_conv = self.conv(xs.transpose(1, 2), conv_state)
        u = self.hook_conv(F.silu(conv_out).transpose(1, 2))
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.hook_delta(F.softplus(self.dt_proj(dt)))
        return {"u": u, "delta": delta, "B": self.hook_B(Bm), "C": self.hook_C(Cm),
                "gate": self.hook_out_gate(F.silu(z)), "conv_state": new_conv}

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        p = self.ssm_inputs(x, None if state is None else state["conv"])
        taps = self.local_taps(pos, x.shape[1])
        self.check_tap_range(x.shape[1], state)
        res = selective_scan(
            p["u"].transpose(1, 2), p["delta"].transpose(1, 2), self.A,
            p["B"].transpose(1, 2), p["C"].transpose(1, 2), D=self.D.float(),
            initial_state=None if state is None else state["ssm"],
            return_final_state=state is not None, tap_positions=taps, backend=self.backend)
        if state is None and taps is None:
            y = res
        else:
            y = res.y
            if taps is not None:
                self.hook_state(res.taps)
        y = self.hook_z(y.transpose(1, 2).to(x.dtype))
        out = self.hook_out(self.out_proj(y * p["gate"]))
        new_state = None if state is None else {"conv": p["conv_state"], "ssm": res.final_state}
        return out, new_state

    # -- protocol (module docstring) ---------------------------------------------------------------
    def summary(self) -> dict:
        cfg = self.cfg
        return dict(d_inner=cfg.d_inner, d_state=cfg.d_state, d_conv=cfg.d_conv, dt_rank=cfg.dt_rank_,
                    n_groups=cfg.n_groups)

    @property
    def groups(self) -> Groups:
        return channel_groups(self.cfg.n_groups, self.d_inner)

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        if mode != "uniform":
            return [("hook_z", site.constant_edit(mode))]

        def uniform(y: Tensor, hook) -> Tensor:
            u = site.take(site.seen["u"]).float()
            return site.put(y, causal_mean(u) + self.D[site.units].float() * u)
        return [("hook_conv", lambda u, hook: site.capture("u", u)), ("hook_z", uniform)]

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return torch.exp(seen["hook_delta"].float()[..., None] * self.A)  # [B, T, D, N]

    def log_chunk_decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_delta"].double().sum(1)[..., None] * self.A.double()  # [B, D, N]

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        return [("hook_delta", scale_hook(c)), ("hook_B", scale_hook(b_scale / c))]

    def gates(self) -> list[GateSpec]:
        A = self.A.detach()  # [D, N]
        return [GateSpec("exp(ΔA)", "hook_delta", lambda d, A=A: torch.exp(d.float()[..., None] * A.to(d.device)),
                         "decay exp(Δ_t A) per state element (d, n)")]

    def ov_factors(self) -> OVFactors:
        H = self.groups.n
        gain = self.conv1d.weight[:, 0, :].sum(-1)  # DC gain of each channel's causal conv
        return OVFactors(head_rows(self.in_proj.weight[:self.d_inner], H),
                         head_columns(self.out_proj.weight, H, gain), "mamba",
                         "linearised: in_proj x-branch rows of channel group h, conv1d replaced by its DC gain (sum of "
                         "taps), SiLU(conv) and SSM as identity, SiLU(z) gate omitted, out_proj columns")

    # -- implicit attention (docs/methods.md §7) ------------------------------------------------------
    @torch.no_grad()
    def implicit_attention(self, x: Tensor, channels: slice | None = None) -> Tensor:
        """Per-channel implicit attention ``α[b, d, t, s] = Σ_n C_{t,n} exp(Σ_{k=s+1..t} Δ_{k,d}
        A_{d,n}) Δ_{s,d} B_{s,n}`` (zero for s > t) for the channels in ``channels``,
        ``[B, d, L, L]``.

        With values ``u`` (= ``hook_conv``) it rebuilds the scan: ``ssm_out[t, d] = Σ_s α[d, t, s]
        u[s, d] + D_d u[t, d]``; the D skip and the SiLU gate lie outside α.
        """
        return self._alpha(self.ssm_inputs(x, None), channels or slice(None))

    def _decay_inputs(self, p: dict[str, Tensor], sl: slice) -> tuple[Tensor, Tensor, Tensor]:
        """``q = C_t``, ``k = Δ_{s,d} B_s`` ``[B, d, L, N]`` and the cumulative log decay
        ``S[b, d, t, n] = Σ_{k≤t} Δ_{k,d} A_{d,n}`` (float64: its differences over long sequences)."""
        delta = p["delta"][..., sl].float()  # [B, L, d]
        S = (delta.double()[..., None] * self.A[sl].double()).cumsum(1).transpose(1, 2)  # [B, d, L, N]
        q = p["C"].float()[:, None]  # [B, 1, L, N]
        k = p["B"].float()[:, None] * delta.transpose(1, 2)[..., None]  # [B, d, L, N]
        return q, k, S

    def _alpha(self, p: dict[str, Tensor], sl: slice, chunk: int = DEFAULT_CHUNK) -> Tensor:
        """α of the channels ``sl`` by the SSD chunk split (models/kernels/decay_attention.py)."""
        return decay_attention_chunked(*self._decay_inputs(p, sl), chunk=chunk)

    def _alpha_reference(self, p: dict[str, Tensor], sl: slice, exact: bool = True) -> Tensor:
        """The direct formula (exp of the ``[B, d, N, L, L]`` segment sums): the twin tests
        compare :meth:`_alpha` with. ``exact``: segment sums in float64 (else float32, as
        ``pattern`` computed them before the chunk split; ``seqlens bench patterns`` times that)."""
        delta = p["delta"][..., sl].float()  # [B, L, d]
        L = delta.shape[1]
        dtype = torch.float64 if exact else torch.float32
        # cumulative log decay S[b, d, n, t] = Σ_{k≤t} Δ_k A; decay(t←s) = exp(S_t − S_s)
        S = torch.einsum("bld,dn->bdnl", delta.to(dtype), self.A[sl].to(dtype)).cumsum(-1)
        seg = S[..., :, None] - S[..., None, :]  # [B, d, N, t, s]
        causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
        decay = torch.exp(seg.masked_fill(~causal, float("-inf"))).float()
        w = torch.einsum("btn,bdnts,bsn->bdts", p["C"].float(), decay, p["B"].float())
        return w * delta.transpose(1, 2)[:, :, None, :]

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention averaged over ``cfg.n_groups`` contiguous channel groups (the
        signed mean of α over each group's ``d_inner / n_groups`` channels): ``[B, H, L, L]``.

        The sum over a group's channels d of ``Σ_n C_t exp(S_t − S_s) Δ_s B_s`` is the same form
        with (d, n) as one contraction axis, so each group's sum comes from one chunked call
        (models/kernels/decay_attention.py) without the per-channel ``[B, d, L, L]`` maps; channels
        go in blocks whose chunk intermediates stay under about ``budget`` elements."""
        p = self.ssm_inputs(x, None)
        B, L = x.shape[:2]
        H, g = self.cfg.n_groups, self.d_inner // self.cfg.n_groups
        Q = min(DEFAULT_CHUNK, L)
        per_channel = B * L * self.d_state * (L // Q + Q)  # off-diagonal left factors + diagonal blocks
        step = max(1, min(g, budget // max(1, per_channel)))
        out = torch.zeros(B, H, L, L, device=x.device, dtype=torch.float32)
        for h in range(H):
            for start in range(h * g, (h + 1) * g, step):
                q, k, S = self._decay_inputs(p, slice(start, min(start + step, (h + 1) * g)))
                merged = (t.expand_as(k).transpose(1, 2).reshape(B, L, -1) for t in (q, k, S))  # [B, L, d·N]
                out[:, h] += decay_attention_chunked(*merged)
        return out / g


class Mamba(SeqModel):
    """Mamba-1 language model: residual blocks of RMSNorm + MambaMixer, no MLP."""

    has_mlp = False

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return MambaMixer
