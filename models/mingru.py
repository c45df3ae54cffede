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
:func:`mingru_scan_ref` is its plain sequential twin. A one-token call (``step``) applies the
recurrence directly.

Hooks (``blocks.{l}.mixer.*``, all ``[B, L, D_h]`` except ``hook_out``):

* ``hook_gate``: minGRU the update gate ``z`` (the share written; the decay is ``1 − z``);
  minLSTM the *normalised* forget gate ``f'`` (the decay itself). Mind the opposite senses when
  comparing the two: ``z`` high = write, ``f'`` high = keep. ``hook_input_gate`` (minLSTM only):
  the normalised input gate ``i' = 1 − f'``.
* ``hook_candidate``: ``h̃``; ``hook_hidden``: every ``h_t`` (the scan's output, so it costs
  nothing extra); ``hook_out [B, L, d_model]``.
* ``hook_state [B, T, D_h]`` (only inside ``SeqModel.tap_states``): ``h`` right after the tapped
  positions. The state *is* the output sequence here, so taps are gathered from ``h``.

Edits to ``hook_gate`` / ``hook_input_gate`` / ``hook_candidate`` feed the scan. ``hook_hidden``
is the read-out: editing it changes the mixer output only, not later ``h_t`` nor the carried
state (the scan has already run); intervene on the recurrence through the gates or candidate.

State: ``{"h": [B, D_h]}`` in float32 (float64 for float64 models).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel, grouped_pattern
from .config import ModelConfig

SCAN_CHUNK = 64  # positions per log-space chunk (bounds |a*|, see mingru_scan)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scans and states run in float32, or float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def positive_activation(v: Tensor) -> Tensor:
    """The paper's ``g(v) = v + 0.5 (v ≥ 0), σ(v) (v < 0)``: continuous, increasing and > 0, so
    the candidate has a real logarithm (log-space minGRU)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


# ----------------------------------------------------------------------------- scans


def mingru_scan_ref(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain sequential twin of :func:`mingru_scan`: ``h_t = a_t ⊙ h_{t−1} + b_t`` for
    ``a, b [B, L, D]`` from ``h_{−1} = h0 [B, D]`` (zeros if None). Returns ``h [B, L, D]`` in
    :func:`compute_dtype`. Obviously correct and slow: the specification the scan must equal."""
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    h = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0.to(dtype)
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def _log_floor(dtype: torch.dtype) -> float:
    """``log(eps²)``: coefficients below ``eps²`` are numerically zero next to the O(1) terms
    they are added to. Flooring keeps ``log 0 = −∞`` out of the scan (it would give ``∞ − ∞``
    in forward and NaN gradients in backward)."""
    return 2.0 * math.log(torch.finfo(dtype).eps)


def _safe_log(x: Tensor) -> Tensor:
    """``log(max(x, eps²))``: finite values and finite gradients, also at x = 0."""
    return x.clamp_min(math.exp(_log_floor(x.dtype))).log()


def _log_scan_chunk(log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
    """Heinsen's scan on one chunk: ``h_t = exp(a*_t + logcumsumexp_{s≤t}(log b_s − a*_s))
    + exp(a*_t) h0`` with ``a*_t = Σ_{k≤t} log a_k``. The initial state enters linearly (it is
    the ``s = −1`` term with ``b_{−1} = h0``) rather than as a prepended ``log h0``, so a zero or,
    after a hook edit, negative ``h0`` needs no logarithm."""
    a_star = log_a.cumsum(1)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
    if h0 is not None:
        h = h + torch.exp(a_star) * h0[:, None]
    return h


def _log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None, chunk_size: int) -> Tensor:
    """Chunked log-space scan: each chunk continues from the previous chunk's last ``h``."""
    out, h = [], h0
    for start in range(0, log_a.shape[1], chunk_size):
        sl = slice(start, start + chunk_size)
        hs = _log_scan_chunk(log_a[:, sl], log_b[:, sl], h)
        out.append(hs)
        h = hs[:, -1]
    return torch.cat(out, 1)


def mingru_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, chunk_size: int = SCAN_CHUNK) -> Tensor:
    """``h_t = a_t ⊙ h_{t−1} + b_t`` in parallel (log space); must equal
    :func:`mingru_scan_ref` (same signature and return).

    ``a [B, L, D] ≥ 0`` (decays), ``b [B, L, D]`` (writes), ``h0 [B, D]`` or None; returns
    ``h [B, L, D]`` in :func:`compute_dtype`.

    Precision: ``log h_t = a*_t + lcse(log b − a*)`` cancels two terms of size ``|a*|``, which
    grows by ``|log a_k|`` per step (up to ``−log eps² ≈ 32`` for a saturated fp32 gate), and
    float32 would lose ``6e-8 · |a*|`` relative accuracy (1e-5 after ten saturated steps). So the
    log-space arithmetic runs in float64 (float32 only on MPS, which lacks float64), split into
    ``chunk_size`` pieces that bound ``|a*|``; the result is exact to the output's rounding.

    ``b`` is positive for minGRU / minLSTM (``h̃ > 0``); negative entries, possible only after a
    hook edit, are handled exactly as two scans since ``h`` is linear in ``b``.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"a, b: expected equal shapes [batch, seq_len, dim], got {list(a.shape)} "
                         f"and {list(b.shape)}")
    if bool((a < 0).any()):
        raise ValueError("a: the log-space scan needs decays a ≥ 0 (gate values in [0, 1]); got a "
                         "negative value (an edited hook_gate outside [0, 1]?)")
    out_dtype = compute_dtype(a.dtype)
    work = torch.float32 if a.device.type == "mps" else torch.float64
    a, b = a.to(work), b.to(work)
    h0 = None if h0 is None else h0.to(work)
    log_a = _safe_log(a)
    if not bool((b < 0).any()):
        h = _log_scan(log_a, _safe_log(b), h0, chunk_size)
    else:
        h = _log_scan(log_a, _safe_log(b.clamp_min(0)), h0, chunk_size)
        h = h - _log_scan(log_a, _safe_log((-b).clamp_min(0)), None, chunk_size)
    return h.to(out_dtype)


# ----------------------------------------------------------------------------- implicit attention


def decay_attention(a: Tensor, w: Tensor) -> Tensor:
    """Implicit attention of ``h_t = a_t ⊙ h_{t−1} + w_t ⊙ v_t`` (METHODS.md §7), per channel:
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

    supports_state_taps = True
    state_key = "h"
    n_gates = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.hidden_dim = D = cfg.hidden_dim
        # gates need biases (the paper's Linear layers); out_proj follows cfg.proj_bias
        self.in_proj = nn.Linear(cfg.d_model, (1 + self.n_gates) * D, bias=True)
        self.out_proj = nn.Linear(D, cfg.d_model, bias=cfg.proj_bias)
        self.hook_gate = HookPoint()
        self.hook_candidate = HookPoint()
        self.hook_hidden = HookPoint()
        self.hook_state = HookPoint()

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        return {"h": torch.zeros(batch, self.hidden_dim, device=device, dtype=compute_dtype(dtype))}

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, w, h̃)``, each ``[B, T, D_h]`` and passed through its hook, for the recurrence
        ``h_t = a_t ⊙ h_{t−1} + w_t ⊙ h̃_t``."""
        raise NotImplementedError

    def candidate(self, logits: Tensor) -> Tensor:
        """``h̃ = g(Linear_h x)`` (positive, see :func:`positive_activation`)."""
        return self.hook_candidate(positive_activation(logits))

    @staticmethod
    def recur(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        """All ``h_t`` of ``h_t = a_t h_{t−1} + b_t``: one token applies the recurrence directly
        (``step``), longer inputs use the log-space scan."""
        if a.shape[1] == 1:
            dtype = compute_dtype(a.dtype)
            a, b = a.to(dtype), b.to(dtype)
            return b if h0 is None else a * h0.to(dtype)[:, None] + b
        return mingru_scan(a, b, h0)

    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        self.check_tap_range(x.shape[1], state)
        a, w, cand = self.coefficients(x)
        h = self.recur(a, w * cand, None if state is None else state["h"])
        taps = self.local_taps(pos, x.shape[1])
        if taps is not None:
            self.hook_state(h[:, taps])
        # the carried state is taken before hook_hidden, whose edits change the read-out only
        new_state = None if state is None else {"h": h[:, -1].clone()}
        out = self.hook_out(self.out_proj(self.hook_hidden(h.to(x.dtype))))
        return out, new_state

    # -- implicit attention (METHODS.md §7) ------------------------------------------------------
    @torch.no_grad()
    def implicit_attention(self, x: Tensor, channels: slice | None = None) -> Tensor:
        """Per-channel implicit attention ``α[b, d, t, s] = w_{s,d} ∏_{k=s+1..t} a_{k,d}`` (minGRU:
        ``z_s ∏ (1 − z_k)``; minLSTM: ``i'_s ∏ f'_k``), ``[B, d, L, L]`` for the channels in
        ``channels``. With values ``h̃`` (= ``hook_candidate``) it rebuilds the scan from a zero
        state: ``hook_hidden[t, d] = Σ_s α[d, t, s] h̃[s, d]``."""
        a, w, _ = self.coefficients(x)
        sl = channels or slice(None)
        return decay_attention(a[..., sl], w[..., sl])

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """Implicit attention averaged over ``cfg.pattern_heads`` contiguous channel groups of the
        hidden state (signed mean of α over each group), ``[B, H, L, L]``; computed in channel
        blocks of at most about ``budget`` elements."""
        a, w, _ = self.coefficients(x)
        alpha = lambda sl: decay_attention(a[..., sl], w[..., sl])  # noqa: E731
        return grouped_pattern(alpha, self.hidden_dim, self.cfg.pattern_heads, tuple(x.shape[:2]),
                               budget, x.device)


class MinGRUMixer(MinRNNMixer):
    """minGRU (§3.1): ``a = 1 − z``, ``w = z``; ``hook_gate`` reports ``z``."""

    n_gates = 1

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden, gate = self.in_proj(x).chunk(2, dim=-1)
        z = self.hook_gate(torch.sigmoid(gate))
        return 1 - z, z, self.candidate(hidden)


class MinLSTMMixer(MinRNNMixer):
    """minLSTM (§3.2): ``a = f' = f / (f + i)``, ``w = i' = i / (f + i)`` (time-independent
    scale: ``f' + i' = 1``). ``hook_gate`` reports ``f'``, ``hook_input_gate`` ``i'``."""

    n_gates = 2

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.hook_input_gate = HookPoint()

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden, forget, inp = self.in_proj(x).chunk(3, dim=-1)
        # f' = σ(log f − log i) with log σ(v) = −softplus(−v): no 0/0 when both gates underflow
        logit = F.softplus(-inp) - F.softplus(-forget)
        f_norm = self.hook_gate(torch.sigmoid(logit))
        i_norm = self.hook_input_gate(torch.sigmoid(-logit))
        return f_norm, i_norm, self.candidate(hidden)


MIXERS: dict[str, type[MinRNNMixer]] = {"mingru": MinGRUMixer, "minlstm": MinLSTMMixer}


class MinGRU(SeqModel):
    """minGRU / minLSTM language model (``cfg.arch`` picks the mixer): residual blocks of
    norm -> mixer -> norm -> MLP."""

    has_mlp = True

    def make_mixer(self, layer: int) -> Mixer:
        return MIXERS[self.cfg.arch](self.cfg)
