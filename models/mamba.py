"""Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

Block: ``x + out_proj(ssm(SiLU(conv1d(W_x h))) * SiLU(W_z h))`` with ``h = RMSNorm(x)`` and the
selective scan (paper Alg. 2, ZOH for A and Euler for B as in the official code):

    Δ_t = softplus(dt_proj(x_proj(u_t)[:dt_rank]))          [B, L, D]
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,   A = −exp(A_log)   [B, D, N]
    y_t = C_t · h_t + D ⊙ u_t

Parameter names follow Hugging Face's ``MambaMixer`` (``in_proj conv1d x_proj dt_proj A_log D
out_proj``) so checkpoints convert one-to-one.

Hooks (``blocks.{l}.mixer.*``): ``hook_in [B, L, D]`` (x branch before the conv), ``hook_conv
[B, L, D]`` (SSM input u = SiLU(conv)), ``hook_delta [B, L, D]`` (after softplus), ``hook_B``,
``hook_C [B, L, N]``, ``hook_ssm_out [B, L, D]`` (scan output incl. the D skip), ``hook_gate
[B, L, D]`` (SiLU(z)), ``hook_out [B, L, d_model]``; inside ``SeqModel.tap_states``,
``hook_state [B, T, D, N]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel, grouped_pattern
from .config import ModelConfig
from .kernels.selective_scan import selective_scan


class MambaMixer(Mixer):
    """The Mamba-1 sequence mixer. State: ``{"conv": [B, D, d_conv - 1]`` (last pre-conv
    inputs), ``"ssm": [B, D, N]}``."""

    supports_state_taps = True
    state_key = "ssm"

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
        for name in ("in", "conv", "delta", "B", "C", "ssm_out", "gate", "state"):
            setattr(self, f"hook_{name}", HookPoint())
        self.scan_backend = "auto"
        self.init_dt()

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
        xs = self.hook_in(xs)
        conv_out, new_conv = self.conv(xs.transpose(1, 2), conv_state)
        u = self.hook_conv(F.silu(conv_out).transpose(1, 2))
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.hook_delta(F.softplus(self.dt_proj(dt)))
        return {"u": u, "delta": delta, "B": self.hook_B(Bm), "C": self.hook_C(Cm),
                "gate": self.hook_gate(F.silu(z)), "conv_state": new_conv}

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
            return_final_state=state is not None, tap_positions=taps, backend=self.scan_backend)
        if state is None and taps is None:
            y = res
        else:
            y = res.y
            if taps is not None:
                self.hook_state(res.taps)
        y = self.hook_ssm_out(y.transpose(1, 2).to(x.dtype))
        out = self.hook_out(self.out_proj(y * p["gate"]))
        new_state = None if state is None else {"conv": p["conv_state"], "ssm": res.final_state}
        return out, new_state

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

    def _alpha(self, p: dict[str, Tensor], sl: slice) -> Tensor:
        delta = p["delta"][..., sl].float()  # [B, L, d]
        L = delta.shape[1]
        # cumulative log decay S[b, d, n, t] = Σ_{k≤t} Δ_k A; decay(t←s) = exp(S_t − S_s)
        S = torch.einsum("bld,dn->bdnl", delta, self.A[sl]).cumsum(-1)
        seg = S[..., :, None] - S[..., None, :]  # [B, d, N, t, s]
        causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
        decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
        w = torch.einsum("btn,bdnts,bsn->bdts", p["C"].float(), decay, p["B"].float())
        return w * delta.transpose(1, 2)[:, :, None, :]

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention averaged over ``cfg.pattern_heads`` contiguous channel groups (the
        signed mean of α over each group's ``d_inner / pattern_heads`` channels): ``[B, H, L, L]``.
        Channels are processed in blocks so the ``[B, d, N, L, L]`` decay tensor stays under
        ``budget`` elements."""
        p = self.ssm_inputs(x, None)
        return grouped_pattern(lambda sl: self._alpha(p, sl), self.d_inner, self.cfg.pattern_heads,
                               tuple(x.shape[:2]), budget // self.d_state, x.device)


class Mamba(SeqModel):
    """Mamba-1 language model: residual blocks of RMSNorm + MambaMixer, no MLP."""

    has_mlp = False

    def make_mixer(self, layer: int) -> Mixer:
        return MambaMixer(self.cfg)
