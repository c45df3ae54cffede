"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Both are diagonal linear recurrences whose gates depend on the input token only (not on
``h_{t-1}``), so the whole sequence runs as one parallel scan. With ``x`` the normalised block
input and ``g`` the paper's positive activation of its log-space version,
``g(v) = v + 0.5 if v ≥ 0 else σ(v)`` (so the candidate is always > 0):

    minGRU (§3.1):   z_t = σ(Linear_z x_t),  h̃_t = g(Linear_h x_t)
                     h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
    minLSTM (§3.2):  f_t = σ(Linear_f x_t),  i_t = σ(Linear_i x_t),  h̃_t = g(Linear_h x_t)
                     f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
                     h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

and the mixer returns ``out_proj(h)`` (hidden_dim -> d_model). Both are ``h_t = a_t ⊙ h_{t−1} +
w_t ⊙ h̃_t`` with a decay ``a`` (1 − z, or f') and a write weight ``w`` (z, or i').

Parallel mode solves the recurrence with Heinsen's log-space scan (Heinsen 2023, "Efficient
Parallelization of a Ubiquitous Sequential Computation"), ``log h_t = a*_t + logcumsumexp_{s≤t}
(log b_s − a*_s)`` with ``a*_t = Σ_{k≤t} log a_k`` and ``b = w ⊙ h̃``, see :func:`mingru_scan`;
:func:`mingru_scan_ref` is its plain sequential twin. Both live in ``kernels/linear_recurrence.py``
(re-exported here), whose dispatcher ``linear_recurrence`` the mixer calls: on CUDA it runs the
Triton kernel, elsewhere a plain loop with a reverse-time backward (faster on CPU than the
log-space scan, which stays available as ``backend="chunked"``). A one-token call (``step``)
applies the recurrence directly.

Hooks (``blocks.{l}.mixer.*``, all ``[B, L, D_h]`` except ``hook_out``; ``MinRNNMixer.HOOKS``):

* ``hook_input_gate``: the write weight ``w`` (minGRU the update gate ``z``, ``hook_gate`` before;
  minLSTM the normalised input gate ``i'``). ``hook_decay``: the decay ``a`` (minGRU ``1 − z``,
  computed from the hooked ``z``; minLSTM the normalised forget gate ``f'``, ``hook_gate`` before).
* ``hook_candidate``: ``h̃``; ``hook_z``: every ``h_t`` (the scan's output, read into
  ``out_proj``: the per-group output; ``hook_hidden`` before); ``hook_out [B, L, d_model]``.
* ``hook_state [B, T, D_h]`` (only inside ``SeqModel.tap_states``): ``h`` right after the tapped
  positions. The state *is* the output sequence here, so taps are gathered from ``h``.

Edits to ``hook_input_gate`` / ``hook_decay`` / ``hook_candidate`` feed the scan. ``hook_z`` is the
read-out: editing it changes the mixer output only, not later ``h_t`` nor the carried state (the
scan has already run); intervene on the recurrence through the gates or candidate.

Protocol: "heads" are ``cfg.n_groups`` contiguous channel groups of h. Zero / mean ablations
act on the group's channels of ``hook_z``; "uniform": ``h[t, d] = mean_{s≤t} h̃[s, d]``. The
decay is ``hook_decay``; ``forget_more`` on minGRU sets ``z' = 1 − (1 − z)^c`` and scales h̃ by
``b_scale · z / z'`` (the write ``z·h̃`` unchanged by c), on minLSTM ``f'^c`` and ``i' · b_scale``.
The OV path: candidate rows of ``in_proj`` of the group, then ``out_proj`` columns (the candidate's
activation taken as identity, offset and biases omitted; the gates are the implicit attention).

State: ``{"h": [B, D_h]}`` in float32 (float64 for float64 models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel, grouped_pattern
from .mixer import (LOG_FLOOR, AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, OVFactors,
                    StateSpec, causal_mean, channel_groups, gate_pow, head_columns, head_rows, pow_hook,
                    scale_hook)
from .config import ModelConfig
from .kernels.linear_recurrence import (  # noqa: F401 - re-exported: the scans used to live here
    SCAN_CHUNK,
    compute_dtype,
    linear_recurrence,
    mingru_scan,
    mingru_scan_ref,
)


def positive_activation(v: Tensor) -> Tensor:
    """The paper's ``g(v) = v + 0.5 (v ≥ 0), σ(v) (v < 0)``: continuous, increasing and > 0, so
    the candidate has a real logarithm (log-space minGRU)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


# ----------------------------------------------------------------------------- implicit attention


def decay_attention(a: Tensor, w: Tensor) -> Tensor:
    """Implicit attention of ``h_t = a_t ⊙ h_{t−1} + w_t ⊙ v_t`` (docs/methods.md §7), per channel:
    ``α[b, d, t, s] = w_{s,d} ∏_{k=s+1..t} a_{k,d}`` for s ≤ t, 0 above the diagonal, so that
    ``h_t = Σ_s α_{t,s} v_s`` from a zero state. ``a, w [B, L, d] -> [B, d, L, L]``.

    The segment sums ``Σ_{k=s+1..t} log a_k`` are accumulated per (t, s) pair, not as differences
    of a prefix sum: no cancellation, and a gate that fully resets (a = 0, log a = −∞) gives exact
    zeros for every earlier source."""
    dtype = compute_dtype(a.dtype)
    log_a = torch.log(a.to(dtype)).transpose(1, 2)  # [B, d, L]
    L = log_a.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    later = ones.tril(-1)  # [k, s]: k > s
    terms = log_a[..., :, None].expand(*log_a.shape, L).masked_fill(~later, 0.0)
    seg = terms.cumsum(-2).masked_fill(~ones.tril(), float("-inf"))  # [B, d, t, s]
    return torch.exp(seg) * w.to(dtype).transpose(1, 2)[:, :, None, :]


# ----------------------------------------------------------------------------- mixers


class MinRNNMixer(Mixer):
    """Shared body of minGRU and minLSTM: a fused input projection ``in_proj`` (candidate logits
    first, then one block per gate), the scan, ``out_proj``. Subclasses define ``n_gates`` and
    :meth:`coefficients`. State ``{"h": [B, D_h]}``."""

    HOOKS = (
        HookSpec("hook_input_gate", "[B, L, D_h]", "write weight w (minGRU: update gate z; minLSTM: i')"),
        HookSpec("hook_decay", "[B, L, D_h]", "decay a (minGRU: 1 − z; minLSTM: normalised forget gate f')"),
        HookSpec("hook_candidate", "[B, L, D_h]", "candidate h̃ = g(Linear_h x) (the value written)"),
        HookSpec("hook_state", "[B, T, D_h]", "h after the tapped positions", "tap_states"),
        HookSpec("hook_z", "[B, L, D_h]", "hidden state h_t, read into out_proj (per-group output)"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    BACKENDS = ("triton", "loop", "chunked", "ref")
    supports_state_taps = True
    state_key = "h"
    state_spec = StateSpec("h", "[B, D_h]", "h [B, D_h], heads = cfg.n_groups channel groups", linear=True)
    decay_hooks = ("hook_decay",)
    memory_hook = "hook_z"
    lrp = LRPRules(detach=("hook_decay", "hook_input_gate"),
                   note="gated linear recurrence: gates detached (the gate rule: w⊙h̃ passes all relevance to "
                   "h̃), candidate activation by the identity rule", method="lrp", family="minrnn")
    n_gates = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.hidden_dim = D = cfg.hidden_dim
        # gates need biases (the paper's Linear layers); out_proj follows cfg.proj_bias
        self.in_proj = nn.Linear(cfg.d_model, (1 + self.n_gates) * D, bias=True)
        self.out_proj = nn.Linear(D, cfg.d_model, bias=cfg.proj_bias)
        self.hook_input_gate = HookPoint()
        self.hook_decay = HookPoint()
        self.hook_candidate = HookPoint()
        self.hook_z = HookPoint()
        self.hook_state = HookPoint()

    # -- protocol (module docstring) ---------------------------------------------------------------
    @property
    def groups(self) -> Groups:
        return channel_groups(self.cfg.n_groups, self.hidden_dim)

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        if mode != "uniform":
            return [("hook_z", site.constant_edit(mode))]
        uniform = lambda h, hook: site.put(h, causal_mean(site.take(site.seen["cand"])))  # noqa: E731
        return [("hook_candidate", lambda c, hook: site.capture("cand", c)), ("hook_z", uniform)]

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_decay"].float()  # [B, T, D_h]

    def log_chunk_decay(self, seen: dict[str, Tensor]) -> Tensor:
        return torch.log(seen["hook_decay"].double()).clamp_min(LOG_FLOOR).sum(1)  # [B, D_h]

    def ov_factors(self) -> OVFactors:  # in_proj = [candidate | gates]
        H = self.groups.n
        return OVFactors(head_rows(self.in_proj.weight[:self.hidden_dim], H),
                         head_columns(self.out_proj.weight, H), "minrnn",
                         "linearised: in_proj candidate rows of channel group h, candidate activation as identity "
                         "(offset and biases omitted), out_proj columns")

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"h": torch.zeros(batch, self.hidden_dim, device=device, dtype=compute_dtype(dtype))}

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, w, h̃)``, each ``[B, T, D_h]`` and passed through its hook, for the recurrence
        ``h_t = a_t ⊙ h_{t−1} + w_t ⊙ h̃_t``."""
        raise NotImplementedError

    def candidate(self, logits: Tensor) -> Tensor:
        """``h̃ = g(Linear_h x)`` (positive, see :func:`positive_activation`)."""
        return self.hook_candidate(positive_activation(logits))

    def recur(self, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        """All ``h_t`` of ``h_t = a_t h_{t−1} + b_t``: one token applies the recurrence directly
        (``step``); longer inputs go through :func:`linear_recurrence` with the mixer's ``backend``
        ("auto": the Triton kernel for CUDA tensors, the loop with a reverse-time backward otherwise)."""
        if a.shape[1] == 1:
            dtype = compute_dtype(a.dtype)
            a, b = a.to(dtype), b.to(dtype)
            return b if h0 is None else a * h0.to(dtype)[:, None] + b
        return linear_recurrence(a, b, h0, backend=self.backend).h

    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        self.check_tap_range(x.shape[1], state)
        a, w, cand = self.coefficients(x)
        h = self.recur(a, w * cand, None if state is None else state["h"])
        taps = self.local_taps(pos, x.shape[1])
        if taps is not None:
            self.hook_state(h[:, taps])
        # the carried state is taken before hook_z, whose edits change the read-out only
        new_state = None if state is None else {"h": h[:, -1].clone()}
        out = self.hook_out(self.out_proj(self.hook_z(h.to(x.dtype))))
        return out, new_state

    # -- implicit attention (docs/methods.md §7) ------------------------------------------------------
    @torch.no_grad()
    def implicit_attention(self, x: Tensor, channels: slice | None = None) -> Tensor:
        """Per-channel implicit attention ``α[b, d, t, s] = w_{s,d} ∏_{k=s+1..t} a_{k,d}`` (minGRU:
        ``z_s ∏ (1 − z_k)``; minLSTM: ``i'_s ∏ f'_k``), ``[B, d, L, L]`` for the channels in
        ``channels``. With values ``h̃`` (= ``hook_candidate``) it rebuilds the scan from a zero
        state: ``hook_z[t, d] = Σ_s α[d, t, s] h̃[s, d]``."""
        a, w, _ = self.coefficients(x)
        sl = channels or slice(None)
        return decay_attention(a[..., sl], w[..., sl])

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention averaged over ``cfg.n_groups`` contiguous channel groups of the
        hidden state (signed mean of α over each group), ``[B, H, L, L]``; computed in channel
        blocks of at most about ``budget`` elements."""
        a, w, _ = self.coefficients(x)
        alpha = lambda sl: decay_attention(a[..., sl], w[..., sl])  # noqa: E731
        return grouped_pattern(alpha, self.hidden_dim, self.cfg.n_groups, tuple(x.shape[:2]),
                               budget, x.device)


class MinGRUMixer(MinRNNMixer):
    """minGRU (§3.1): ``a = 1 − z``, ``w = z``; ``hook_input_gate`` reports ``z``, ``hook_decay``
    ``1 − z``."""

    n_gates = 1

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden, gate = self.in_proj(x).chunk(2, dim=-1)
        z = self.hook_input_gate(torch.sigmoid(gate))
        return self.hook_decay(1 - z), z, self.candidate(hidden)

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        """z shared by decay (1 − z) and write (z): z' = 1 − (1 − z)^c on hook_input_gate and
        h̃·b_scale·z/z' on hook_candidate (called right after it), so the write stays z·h̃·b_scale."""
        ratio: dict[str, Tensor] = {}

        def gate(z, hook):
            if c == 1.0:
                return z
            z2 = 1 - gate_pow(1 - z, c)
            ratio["r"] = torch.where(z2 > 0, z / z2.clamp_min(1e-30), torch.ones_like(z))
            return z2

        def cand(h, hook):
            r = ratio.pop("r", None)
            return h * b_scale if r is None else h * (b_scale * r).to(h.dtype)
        return [("hook_input_gate", gate), ("hook_candidate", cand)]

    def gates(self) -> list[GateSpec]:
        return [GateSpec("z", "hook_input_gate", lambda z: z, "update gate z (share written)"),
                GateSpec("1-z", "hook_decay", lambda a: a, "decay 1 − z (share kept)")]


class MinLSTMMixer(MinRNNMixer):
    """minLSTM (§3.2): ``a = f' = f / (f + i)``, ``w = i' = i / (f + i)`` (time-independent
    scale: ``f' + i' = 1``). ``hook_decay`` reports ``f'``, ``hook_input_gate`` ``i'``."""

    n_gates = 2
    HOOKS = (MinRNNMixer.HOOKS[1], MinRNNMixer.HOOKS[0]) + MinRNNMixer.HOOKS[2:]  # f' is computed first

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden, forget, inp = self.in_proj(x).chunk(3, dim=-1)
        # f' = σ(log f − log i) with log σ(v) = −softplus(−v): no 0/0 when both gates underflow
        logit = F.softplus(-inp) - F.softplus(-forget)
        f_norm = self.hook_decay(torch.sigmoid(logit))
        i_norm = self.hook_input_gate(torch.sigmoid(-logit))
        return f_norm, i_norm, self.candidate(hidden)

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        return [("hook_decay", pow_hook(c)), ("hook_input_gate", scale_hook(b_scale))]

    def gates(self) -> list[GateSpec]:
        return [GateSpec("f'", "hook_decay", lambda f: f, "normalised forget gate f' (decay)"),
                GateSpec("i'", "hook_input_gate", lambda i: i, "normalised input gate i'")]


MIXERS: dict[str, type[MinRNNMixer]] = {"mingru": MinGRUMixer, "minlstm": MinLSTMMixer}


class MinGRU(SeqModel):
    """minGRU / minLSTM language model (``cfg.arch`` picks the mixer): residual blocks of
    norm -> mixer -> norm -> MLP."""

    has_mlp = True

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return MIXERS[cfg.arch]
