"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality"), as transformers' ``Mamba2Mixer`` computes it
(``torch_forward``; parameter names are theirs, so checkpoints convert one-to-one):

    z, xBC, dt = in_proj(u)                          [D], [D + 2GN], [H]
    x, B, C    = SiLU(causal depthwise conv(xBC))    x [H, P] heads, B, C [G, N] groups
    Δ_t        = softplus(dt + dt_bias)              [H]
    S_t        = exp(Δ_t A_h) S_{t-1} + Δ_t x_t B_tᵀ  A_h = −exp(A_log_h), one scalar per head
    y_t        = S_t C_t + D_h x_t
    out        = out_proj(RMSNorm_groups(y ⊙ SiLU(z)))   (gated RMSNorm over G groups of D / G)

The scan runs through :func:`~seqlens.models.kernels.ssd.ssd_scan` (Triton on CUDA, the chunked
SSD form on CPU, the step loop as reference).

Hooks (``blocks.{l}.mixer.*``; ``Mamba2Mixer.HOOKS``), named like Mamba's where the meaning is
the same: ``hook_x [B, L, D]`` (x part of xBC before the conv), ``hook_xbc [B, L, D + 2GN]``
(all of xBC entering the conv), ``hook_conv [B, L, H, P]`` (the
SSM input x = SiLU(conv), the value written), ``hook_delta [B, L, H]`` (Δ), ``hook_B``, ``hook_C
[B, L, G, N]``, ``hook_z [B, L, H, P]`` (scan output incl. the D skip, per-head output),
``hook_out_gate [B, L, D]`` (SiLU(z)), ``norm.hook_scale [B, L, G, 1]`` (the gated norm's rms),
``hook_out``; inside ``SeqModel.tap_states``, ``hook_state [B, T, H, P, N]``.

Protocol: the groups are the heads (per-group output ``hook_z``). Ablations edit ``hook_z`` with
the gated norm's rms held at its clean value (so a head's edit does not leak into the other heads
of its norm group, and zeroing a head equals zeroing its ``out_proj`` columns); "uniform" replaces
α by uniform causal weights, ``z[t, h] = mean_{s≤t} x_s[h] + D_h x_t[h]``. The decay is ``exp(Δ_t A_h)``
per head; ``forget_more`` scales Δ by c and B by b_scale / c. Implicit attention (docs/methods.md
§7) ``α[h, t, s] = (C_t·B_s) exp(Σ_{k=s+1..t} Δ_k A_h) Δ_s``, so ``hook_z[t, h] = Σ_s α[h, t, s]
x_s[h] + D_h x_t[h]``. The OV path is linearised as Mamba's: x rows of ``in_proj`` of head h, the
conv by its DC gain, SiLU and the scan as identity, the gate and the norm's 1/rms omitted (its
weight kept), then ``out_proj`` columns.

Left padding (``forward(tokens, attention_mask)``, ``pad_write_hooks``): ``hook_xbc`` zeroed at pads
gives each row's first real token the zero conv history it has alone. That alone is not enough: a
pad's conv output is SiLU(conv bias) ≠ 0, so x and B at pads are not zero. ``hook_delta`` zeroed at
pads makes the write ``Δ x Bᵀ`` exactly 0 and the decay ``exp(0·A) = 1``, so the state is exactly zero
until the first real token, and α gives pad columns zero weight (a real row's α equals its unpadded α).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel
from .config import ModelConfig
from .kernels.ssd import ssd_scan
from .mixer import (AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, OVFactors, StateSpec,
                    causal_mean, head_columns, head_rows, scale_hook)


class GatedRMSNorm(nn.Module):
    """transformers' ``Mamba2RMSNormGated`` with the gate applied by the caller: RMSNorm over
    ``groups`` contiguous groups of the last dim, in float32, then the weight. ``hook_scale
    [B, L, G, 1]`` is the per-group rms (LRP detaches it)."""

    def __init__(self, d: int, groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.groups, self.eps = groups, eps
        self.hook_scale = HookPoint()

    def forward(self, y: Tensor) -> Tensor:
        g = y.float().unflatten(-1, (self.groups, -1))
        scale = self.hook_scale((g.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.weight * (g / scale).flatten(-2).to(y.dtype)


class Mamba2Mixer(Mixer):
    """The Mamba-2 mixer. State: ``{"conv": [B, D + 2GN, d_conv - 1]`` (last pre-conv inputs),
    ``"ssm": [B, H, P, N]}`` (float32)."""

    HOOKS = (
        HookSpec("hook_x", "[B, L, D]", "x part of in_proj's xBC, before the conv"),
        HookSpec("hook_xbc", "[B, L, D_xbc]", "in_proj's xBC = (x, B, C) entering the causal conv, D_xbc = D + 2GN"),
        HookSpec("hook_conv", "[B, L, H, P]", "SSM input x = SiLU(conv(xBC)) per head (the value written)"),
        HookSpec("hook_delta", "[B, L, H]", "step size Δ after softplus (decay exp(Δ A_h) per head)"),
        HookSpec("hook_B", "[B, L, G, N]", "input matrix B_t per group of heads (write)"),
        HookSpec("hook_C", "[B, L, G, N]", "output matrix C_t per group of heads (read)"),
        HookSpec("hook_out_gate", "[B, L, D]", "output gate SiLU(z branch)"),
        HookSpec("hook_state", "[B, T, H, P, N]", "SSM state after the tapped positions", "tap_states"),
        HookSpec("hook_z", "[B, L, H, P]", "scan output incl. the D skip, before gate and norm (per-head output)"),
        HookSpec("norm.hook_scale", "[B, L, G, 1]", "gated RMSNorm: rms of each group of hook_z ⊙ gate"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    BACKENDS = ("triton", "chunked", "ref")
    supports_state_taps = True
    # left padding (module docstring): zero conv history, and Δ = 0 at pads (decay 1, write Δ x Bᵀ = 0)
    pad_write_hooks = ("hook_xbc", "hook_delta")
    state_key = "ssm"
    state_spec = StateSpec("ssm", "[B, H, P, N]", "ssm [B, heads, head_dim, d_state], the mixer's heads", linear=True)
    decay_hooks = ("hook_delta",)
    memory_hook = "hook_z"
    lrp = LRPRules(detach=("hook_delta", "hook_B", "hook_C", "norm.hook_scale"),
                   uniform=("hook_z * hook_out_gate",),
                   note="MambaLRP (Jafari et al. 2024) on Mamba-2: scan linear in x given Δ, B, C (detached); SiLU by "
                   "the identity rule; gate product uniform; the gated norm's 1/rms detached", method="mambalrp",
                   family="mamba2")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, N, H, G = cfg.d_inner, cfg.d_state, cfg.n_heads, cfg.n_bc_groups
        self.d_inner, self.d_state, self.n_heads, self.head_dim, self.n_bc_groups = D, N, H, D // H, G
        self.conv_dim = D + 2 * G * N
        self.in_proj = nn.Linear(cfg.d_model, D + self.conv_dim + H, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))  # A_h = -h (S4D-real)
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(D, G, cfg.norm_eps)
        self.out_proj = nn.Linear(D, cfg.d_model, bias=cfg.proj_bias)
        for name in ("x", "xbc", "conv", "delta", "B", "C", "z", "out_gate", "state"):
            setattr(self, f"hook_{name}", HookPoint())
        self.init_dt()

    @torch.no_grad()
    def init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """transformers' / the paper's initialisation: ``softplus(dt_bias)`` log-uniform in
        ``[dt_min, dt_max]`` (a slowly forgetting state; see ``MambaMixer.init_dt``)."""
        u = torch.rand(self.n_heads)
        dt = torch.exp(u * (torch.log(torch.tensor(dt_max)) - torch.log(torch.tensor(dt_min)))
                       + torch.log(torch.tensor(dt_min))).clamp_min(dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"conv": torch.zeros(batch, self.conv_dim, self.cfg.d_conv - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device,
                                   dtype=torch.float32)}

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    # -- pieces ----------------------------------------------------------------------------------
    def conv(self, xbc: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv of ``xbc [B, C, T]`` continuing from the last ``d_conv - 1``
        inputs (zeros at the start); returns ``(conv output [B, C, T], new conv state)``."""
        k = self.cfg.d_conv - 1
        if conv_state is None:
            conv_state = xbc.new_zeros(xbc.shape[0], xbc.shape[1], k)
        full = torch.cat([conv_state.to(xbc.dtype), xbc], dim=-1)
        return self.conv1d(full), full[..., full.shape[-1] - k:]

    def ssm_inputs(self, x: Tensor, conv_state: Tensor | None) -> dict[str, Tensor]:
        """Everything the scan needs for the normalised input ``x [B, T, d_model]``, each through
        its hook: ``u [B, T, H, P]``, ``delta [B, T, H]``, ``B, C [B, T, G, N]``, ``gate [B, T,
        D]`` and the new conv state."""
        Bt, T, _ = x.shape
        D, GN = self.d_inner, self.n_bc_groups * self.d_state
        z, xs, b_in, c_in, dt = self.in_proj(x).split([D, D, GN, GN, self.n_heads], dim=-1)
        xbc = self.hook_xbc(torch.cat([self.hook_x(xs), b_in, c_in], dim=-1))
        conv_out, new_conv = self.conv(xbc.transpose(1, 2), conv_state)
        u, Bm, Cm = F.silu(conv_out).transpose(1, 2).split([D, GN, GN], dim=-1)
        groups = (self.n_bc_groups, self.d_state)
        return {"u": self.hook_conv(u.unflatten(-1, (self.n_heads, self.head_dim))),
                "delta": self.hook_delta(F.softplus(dt.float() + self.dt_bias.float())),
                "B": self.hook_B(Bm.unflatten(-1, groups)), "C": self.hook_C(Cm.unflatten(-1, groups)),
                "gate": self.hook_out_gate(F.silu(z)), "conv_state": new_conv}

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        p = self.ssm_inputs(x, None if state is None else state["conv"])
        taps = self.local_taps(pos, x.shape[1])
        self.check_tap_range(x.shape[1], state)
        res = ssd_scan(p["u"], p["delta"], self.A, p["B"], p["C"],
                       initial_state=None if state is None else state["ssm"], tap_positions=taps,
                       backend=self.backend, chunk_size=self.cfg.chunk_size)
        if res.taps is not None:
            self.hook_state(res.taps)
        y = res.y + self.D.to(res.y.dtype)[:, None] * p["u"].to(res.y.dtype)
        y = self.hook_z(y.to(x.dtype))
        out = self.hook_out(self.out_proj(self.norm(y.flatten(-2) * p["gate"])))
        new_state = None if state is None else {"conv": p["conv_state"], "ssm": res.final_state.float()}
        return out, new_state

    # -- protocol (module docstring) ---------------------------------------------------------------
    def summary(self) -> dict:
        cfg = self.cfg
        return dict(d_inner=cfg.d_inner, n_heads=cfg.n_heads, head_dim=self.head_dim, d_state=cfg.d_state,
                    n_bc_groups=cfg.n_bc_groups, d_conv=cfg.d_conv)

    @property
    def groups(self) -> Groups:
        return Groups(self.n_heads, self.n_heads, "head")

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        """Edit the heads' ``hook_z`` (zero / mean / uniform, module docstring) with the gated
        norm's per-group rms held at its clean value: the norm mixes the heads of a group, and
        with its scale fixed the edit reaches the output only through the heads' own ``out_proj``
        columns (zero ablation equals zeroing those columns) and leaves the other heads alone."""
        edit = site.constant_edit(mode) if mode != "uniform" else None

        def ablate(z: Tensor, hook) -> Tensor:
            site.capture("z", z)
            if edit is not None:
                return edit(z, hook)
            u = site.take(site.seen["u"]).float()  # [B, L, h, P]
            return site.put(z, causal_mean(u) + self.D[site.units].float()[:, None] * u)

        def clean_scale(scale: Tensor, hook) -> Tensor:
            y = (site.seen["z"].flatten(-2) * site.seen["gate"]).float().unflatten(-1, (self.n_bc_groups, -1))
            return (y.pow(2).mean(-1, keepdim=True) + self.norm.eps).sqrt()
        hooks = [("hook_out_gate", lambda g, hook: site.capture("gate", g)), ("hook_z", ablate),
                 ("norm.hook_scale", clean_scale)]
        if mode == "uniform":
            hooks.insert(0, ("hook_conv", lambda u, hook: site.capture("u", u)))
        return hooks

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return torch.exp(seen["hook_delta"].float() * self.A)  # [B, T, H]

    def log_chunk_decay(self, seen: dict[str, Tensor]) -> Tensor:
        return (seen["hook_delta"].double().sum(1) * self.A.double())[..., None, None]  # [B, H, 1, 1]

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        return [("hook_delta", scale_hook(c)), ("hook_B", scale_hook(b_scale / c))]

    def gates(self) -> list[GateSpec]:
        A = self.A.detach()  # [H]
        return [GateSpec("exp(ΔA)", "hook_delta", lambda d, A=A: torch.exp(d.float() * A.to(d.device)),
                         "decay exp(Δ_t A_h), one per head")]

    def ov_factors(self) -> OVFactors:
        D, H = self.d_inner, self.n_heads
        gain = self.conv1d.weight[:D, 0, :].sum(-1)  # DC gain of each x channel's causal conv
        W_V = head_rows(self.in_proj.weight[D:2 * D] * gain[:, None], H)
        return OVFactors(W_V, head_columns(self.out_proj.weight, H, self.norm.weight), "mamba",
                         "linearised: in_proj x rows of head h times the conv's DC gain (sum of taps), SiLU(conv) "
                         "and SSM as identity, SiLU(z) gate and the gated norm's 1/rms omitted (its weight kept), "
                         "out_proj columns")

    # -- implicit attention (docs/methods.md §7) ------------------------------------------------------
    @torch.no_grad()
    def implicit_attention(self, x: Tensor) -> Tensor:
        """``α[b, h, t, s] = (C_t·B_s) exp(Σ_{k=s+1..t} Δ_k A_h) Δ_s`` (0 for s > t), ``[B, H, L,
        L]``, with B, C of head h's group: ``hook_z[t, h] = Σ_s α[h, t, s] x_s[h] + D_h x_t[h]``
        (``x`` = ``hook_conv``) from an empty state. The D skip, gate and norm lie outside α."""
        return self.pattern(x)

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention per head, ``[B, H, L, L]`` (:meth:`implicit_attention`); query rows
        in blocks of at most ``budget`` elements."""
        p = self.ssm_inputs(x, None)
        return ssd_attention_matrix(p["delta"], self.A, p["B"], p["C"], budget)


def ssd_attention_matrix(delta: Tensor, A: Tensor, B: Tensor, C: Tensor, budget: int = 2**25) -> Tensor:
    """``α[b, h, t, s] = (C_t·B_s) exp(Σ_{k=s+1..t} Δ_k A_h) Δ_s`` (0 for s > t), ``[B, H, L, L]``
    in float32 or wider, from ``delta [B, L, H]``, ``A [H]``, ``B, C [B, L, G, N]`` (head h reads
    group ``h // (H / G)``). The cumulative log decays are summed in float64, so ``c_t − c_s``
    loses nothing over long sequences (masked before ``exp``); query rows go in blocks of at most
    ``budget`` elements."""
    Bt, L, H = delta.shape
    dtype = torch.promote_types(delta.dtype, torch.float32)
    rep = H // B.shape[2]
    Cg, Bg = C.to(dtype), B.to(dtype)
    c = (delta.double() * A.double()).cumsum(1).transpose(1, 2)  # [B, H, L]
    dts = delta.to(dtype).transpose(1, 2)[:, :, None, :]  # Δ_s  [B, H, 1, L]
    pos = torch.arange(L, device=delta.device)
    out = torch.zeros(Bt, H, L, L, dtype=dtype, device=delta.device)
    rows = max(1, budget // max(1, Bt * H * L))
    for t0 in range(0, L, rows):
        t1 = min(L, t0 + rows)
        causal = pos[t0:t1, None] >= pos[None, :]
        seg = (c[:, :, t0:t1, None] - c[:, :, None, :]).masked_fill(~causal, float("-inf"))
        cb = torch.einsum("btgn,bsgn->bgts", Cg[:, t0:t1], Bg).repeat_interleave(rep, dim=1)
        out[:, :, t0:t1] = cb * seg.exp().to(dtype) * dts
    return out


class Mamba2(SeqModel):
    """Mamba-2 language model: residual blocks of RMSNorm + Mamba2Mixer, no MLP."""

    has_mlp = False

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return Mamba2Mixer
