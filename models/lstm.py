"""Classic LSTM (Hochreiter & Schmidhuber 1997; forget gate of Gers et al. 2000) as a sequence
mixer, with hooks for the analyses of Karpathy et al. 2015 ("Visualizing and Understanding
Recurrent Networks": gate saturation, interpretable cells).

With ``x`` the normalised block input (gate order i, f, g, o, as in ``torch.nn.LSTM``):

    i_t = σ(W_i x_t + U_i h_{t−1} + b_i)      f_t = σ(W_f x_t + U_f h_{t−1} + b_f)
    g_t = tanh(W_g x_t + U_g h_{t−1} + b_g)   o_t = σ(W_o x_t + U_o h_{t−1} + b_o)
    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t           h_t = o_t ⊙ tanh(c_t)

and the mixer returns ``out_proj(h)`` (hidden_dim -> d_model). ``in_proj`` holds ``W`` and ``b``,
``hidden_proj`` holds ``U``; so ``torch.nn.LSTM`` weights map one-to-one (``weight_ih_l0 =
in_proj.weight``, ``weight_hh_l0 = hidden_proj.weight``, ``bias_ih_l0 + bias_hh_l0 =
in_proj.bias``). The forget-gate bias starts at +1 (Gers et al. 2000; Jozefowicz et al. 2015),
the usual practice so that memory is kept early in training.

The gates depend on ``h_{t−1}``, so there is no parallel form: forward is a loop over time, with
``W x + b`` computed for the whole chunk in one matmul and ``U h`` per step. It always runs this
explicit loop (no ``torch.nn.LSTM`` fast path): hooks see, and edits change, exactly what runs.

Hooks (``blocks.{l}.mixer.*``, each ``[B, L, D_h]``; ``LSTMMixer.HOOKS``), named by meaning as on
the other recurrent mixers (former names in brackets): ``hook_input_gate`` (i; ``hook_i``),
``hook_decay`` (the forget gate f; ``hook_f``), ``hook_candidate`` (g; ``hook_g``),
``hook_out_gate`` (o; ``hook_o``), ``hook_c`` (the cell), ``hook_z`` (h, the per-group output read
into ``out_proj``; ``hook_h``), ``hook_out [B, L, d_model]``; inside ``SeqModel.tap_states``,
``hook_state [B, T, 2, D_h]`` with ``[:, :, 0] = h`` and ``[:, :, 1] = c``.

Protocol: "heads" are ``cfg.n_groups`` contiguous channel groups of h. h also feeds the
recurrence (an edit there replays the loop), so head ablation acts on the read-out only: at
``hook_out`` the group's term ``h[g] @ W_out[:, g]ᵀ`` is replaced by ``h'[g] @ W_out[:, g]ᵀ`` with
``h' = 0`` (zero), the mean of h over ``reference`` (mean), or ``o_t ⊙ tanh(mean_{s≤t} g_s)``
(uniform: the cell's conditional decomposition with uniform α, read out through the realised
output gate). The decay is f; ``forget_more`` uses ``f^c`` and ``i · b_scale`` (nonlinear: the edits
feed the replay). ``state_window`` does not apply (nonlinear recurrence). The OV path: the g rows
of ``in_proj`` of the group, then ``out_proj`` columns (tanh of g and of c as identity, the
recurrent ``U_g h`` and the output gate omitted).

Hooks fire once per call on whole sequences. An edit made by a hook on any of the per-step
quantities (i, f, g, o, c, h) feeds the recurrence (e.g. zeroing cell d of ``hook_c`` also changes every later gate):
when any of these hooks changes its tensor, the loop is replayed step by step, calling the active
hooks at each step t on the sequence computed so far (zeros after t) and using their value at t;
a last call on the whole sequence is the one caches keep. Edits should therefore be causal
(position t may depend on positions ≤ t only), and side-effecting hooks see the extra calls.

State: ``{"h": [B, D_h], "c": [B, D_h]}`` (the values after any edits).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .base import Mixer, SeqModel, grouped_pattern, hook_active
from .mixer import (AblationSite, GateSpec, Groups, HookList, HookSpec, LRPRules, OVFactors, StateSpec,
                    causal_mean, channel_groups, head_columns, head_rows, pow_hook, scale_hook)
from .config import ModelConfig
from .mingru import decay_attention

SEQ = ("i", "f", "g", "o", "c", "h")  # per-step quantities, in the order they are computed
HOOK = {"i": "hook_input_gate", "f": "hook_decay", "g": "hook_candidate", "o": "hook_out_gate",
        "c": "hook_c", "h": "hook_z"}  # the hook point of each (uniform names across mixers)
Edit = Callable[[str, int, Tensor], Tensor]  # (name, step, value) -> value used by the loop


def _no_edit(name: str, t: int, value: Tensor) -> Tensor:
    return value


class LSTMMixer(Mixer):
    """The LSTM sequence mixer. State ``{"h", "c"}``, both ``[B, D_h]``."""

    HOOKS = (
        HookSpec("hook_input_gate", "[B, L, D_h]", "input gate i (write weight)"),
        HookSpec("hook_decay", "[B, L, D_h]", "forget gate f (decay of the cell)"),
        HookSpec("hook_candidate", "[B, L, D_h]", "cell input g = tanh(·) (the value written)"),
        HookSpec("hook_out_gate", "[B, L, D_h]", "output gate o"),
        HookSpec("hook_c", "[B, L, D_h]", "cell c_t"),
        HookSpec("hook_z", "[B, L, D_h]", "hidden state h_t = o ⊙ tanh(c_t), read into out_proj (per-group output)"),
        HookSpec("hook_state", "[B, T, 2, D_h]", "stack(h, c) after the tapped positions", "tap_states"),
        HookSpec("hook_out", "[B, L, d_model]", "the mixer's output"),
    )
    supports_state_taps = True
    state_key = None  # hook_state reports h and c together, see tap_value
    state_spec = StateSpec("c", "[B, D_h]", "cell c [B, D_h], heads = cfg.n_groups channel groups")
    decay_hooks = ("hook_decay",)
    memory_hook = "hook_c"
    lrp = LRPRules(detach=("hook_input_gate", "hook_decay", "hook_out_gate"),
                   note="LSTM gate rule (Arras et al. 2017): gates detached, so i⊙g and o⊙tanh(c) pass all "
                   "relevance to the signal; tanh by the identity rule", method="lrp", family="lstm")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.hidden_dim = D = cfg.hidden_dim
        self.in_proj = nn.Linear(cfg.d_model, 4 * D, bias=True)  # W x + b, gates [i f g o]
        self.hidden_proj = nn.Linear(D, 4 * D, bias=False)  # U h
        self.out_proj = nn.Linear(D, cfg.d_model, bias=cfg.proj_bias)
        with torch.no_grad():
            self.in_proj.bias[D:2 * D] += 1.0  # forget-gate bias +1
        for name in list(HOOK.values()) + ["hook_state"]:
            setattr(self, name, HookPoint())

    # -- protocol (module docstring) -------------------------------------------------------
    @property
    def groups(self) -> Groups:
        return channel_groups(self.cfg.n_groups, self.hidden_dim)

    def ablation_hooks(self, site: AblationSite, mode: str) -> HookList:
        """Replace the group's read-out term at hook_out (h itself, which feeds the recurrence, is
        only observed, so the loop is not replayed)."""
        W = self.out_proj.weight  # [d_model, D_h]
        names = ["h"] + (["g", "o"] if mode == "uniform" else [])

        def readout(out: Tensor, hook) -> Tensor:
            h = site.take(site.seen["h"]).float()
            if mode == "zero":
                new = torch.zeros_like(h)
            elif mode == "mean":
                new = site.mean_value(site.seen["h"]).float().expand_as(h)
            else:
                g, o = site.take(site.seen["g"]).float(), site.take(site.seen["o"]).float()
                new = o * torch.tanh(causal_mean(g))
            return out + ((new - h) @ W[:, site.units].float().T).to(out.dtype)
        capture = [(HOOK[n], lambda x, hook, n=n: site.capture(n, x)) for n in names]
        return capture + [("hook_out", readout)]

    def decay(self, seen: dict[str, Tensor]) -> Tensor:
        return seen["hook_decay"].float()

    def forget_hooks(self, b_scale: float, c: float) -> HookList:
        return [("hook_decay", pow_hook(c)), ("hook_input_gate", scale_hook(b_scale))]

    def gates(self) -> list[GateSpec]:
        return [GateSpec(g, HOOK[g], lambda x: x, f"{name} gate σ(·)")
                for g, name in (("i", "input"), ("f", "forget"), ("o", "output"))]

    def ov_factors(self) -> OVFactors:  # in_proj gates [i f g o]
        D, H = self.hidden_dim, self.groups.n
        return OVFactors(head_rows(self.in_proj.weight[2 * D:3 * D], H), head_columns(self.out_proj.weight, H),
                         "lstm", "linearised: in_proj g-gate rows of cell group h, tanh(g) and tanh(c) as identity, "
                         "recurrent U_g h and output gate omitted, out_proj columns")

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        zeros = torch.zeros(batch, self.hidden_dim, device=device, dtype=dtype)
        return {"h": zeros, "c": zeros.clone()}

    def tap_value(self, state: dict[str, Tensor]) -> Tensor:
        """``stack([h, c], 1)``: ``[B, 2, D_h]``, what ``hook_state`` reports per position."""
        return torch.stack([state["h"], state["c"]], 1)

    # -- the recurrence ----------------------------------------------------------------------
    def cell(self, pre: Tensor, h: Tensor, c: Tensor, edit: Callable[[str, Tensor], Tensor]) -> dict[str, Tensor]:
        """One step of the module equations from the precomputed ``pre = W x_t + b [B, 4 D_h]``;
        ``edit(name, value)`` may replace each quantity before later ones use it."""
        i, f, g, o = (pre + self.hidden_proj(h)).chunk(4, dim=-1)
        v = {"i": edit("i", torch.sigmoid(i)), "f": edit("f", torch.sigmoid(f)),
             "g": edit("g", torch.tanh(g)), "o": edit("o", torch.sigmoid(o))}
        v["c"] = edit("c", v["f"] * c + v["i"] * v["g"])
        v["h"] = edit("h", v["o"] * torch.tanh(v["c"]))
        return v

    def loop(self, pre: Tensor, h: Tensor, c: Tensor, edit: Edit = _no_edit) -> dict[str, Tensor]:
        """Run :meth:`cell` over ``pre [B, T, 4 D_h]`` from ``(h, c)``; returns every quantity in
        :data:`SEQ` stacked over time, ``[B, T, D_h]``."""
        steps = []
        for t in range(pre.shape[1]):
            v = self.cell(pre[:, t], h, c, lambda name, value: edit(name, t, value))
            h, c = v["h"], v["c"]
            steps.append(v)
        return {k: torch.stack([s[k] for s in steps], 1) for k in SEQ}

    # -- hooks ------------------------------------------------------------------------------
    def fire_hooks(self, seq: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
        """Pass each sequence through its hook; also report whether any hook changed its tensor
        (returned other values, or edited in place)."""
        out, edited = {}, False
        for k in SEQ:
            hp = getattr(self, HOOK[k])
            if not hook_active(hp):
                out[k] = seq[k]
                continue
            before = seq[k].clone()
            out[k] = hp(seq[k])
            edited = edited or not torch.equal(out[k], before)
        return out, edited

    def replay(self, pre: Tensor, h: Tensor, c: Tensor) -> dict[str, Tensor]:
        """Re-run the loop so hook edits feed the recurrence (see the module docstring): at step
        t each active hook gets its sequence so far (raw values, zeros after t) and its output at
        t is used; then one call per hook on the whole raw sequence."""
        active = {k for k in SEQ if hook_active(getattr(self, HOOK[k]))}
        raw = {k: pre.new_zeros(*pre.shape[:2], self.hidden_dim) for k in active}

        def edit(name: str, t: int, value: Tensor) -> Tensor:
            if name not in active:
                return value
            raw[name][:, t] = value
            return getattr(self, HOOK[name])(raw[name].clone())[:, t]

        seq = self.loop(pre, h, c, edit)
        for k in sorted(active, key=SEQ.index):
            getattr(self, HOOK[k])(raw[k])
        return seq

    def sequence(self, x: Tensor, h: Tensor | None = None, c: Tensor | None = None) -> dict[str, Tensor]:
        """Every hooked quantity of :data:`SEQ` for the normalised input ``x [B, T, d_model]``,
        continuing from ``(h, c)`` (zeros if None)."""
        pre = self.in_proj(x)  # W x + b for the whole chunk in one matmul
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_dim)
            c = torch.zeros_like(h)
        seq, edited = self.fire_hooks(self.loop(pre, h, c))
        return self.replay(pre, h, c) if edited else seq

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, state: dict | None = None, pos: int = 0) -> tuple[Tensor, dict | None]:
        self.check_tap_range(x.shape[1], state)
        h, c = (None, None) if state is None else (state["h"], state["c"])
        seq = self.sequence(x, h, c)
        taps = self.local_taps(pos, x.shape[1])
        if taps is not None:
            self.hook_state(torch.stack([seq["h"][:, taps], seq["c"][:, taps]], 2))
        out = self.hook_out(self.out_proj(seq["h"]))
        new_state = None if state is None else {"h": seq["h"][:, -1], "c": seq["c"][:, -1]}
        return out, new_state

    # -- implicit attention (docs/methods.md §7) --------------------------------------------------
    @torch.no_grad()
    def implicit_attention(self, x: Tensor, channels: slice | None = None) -> Tensor:
        """Conditional decomposition of the cell, per channel: ``α[b, d, t, s] = i_{s,d}
        ∏_{k=s+1..t} f_{k,d}`` (s ≤ t), ``[B, d, L, L]``, so that ``c_t = Σ_s α_{t,s} g_s`` with
        values ``g`` (= ``hook_candidate``) from a zero state.

        "Conditional": the gates are the ones realised on this input, and they depend on ``h``,
        hence on earlier tokens. α decomposes ``c`` given those gates; it is not a linear map of
        the inputs, and ``h = o ⊙ tanh(c)`` adds a per-token nonlinearity outside α."""
        seq = self.sequence(x)
        sl = channels or slice(None)
        return decay_attention(seq["f"][..., sl], seq["i"][..., sl])

    @torch.no_grad()
    def pattern(self, x: Tensor, budget: int = 2**25) -> Tensor:
        """The conditional decomposition averaged over ``cfg.n_groups`` contiguous channel
        groups of the cell (signed mean of α), ``[B, H, L, L]``; channel blocks of at most about
        ``budget`` elements."""
        seq = self.sequence(x)
        alpha = lambda sl: decay_attention(seq["f"][..., sl], seq["i"][..., sl])  # noqa: E731
        return grouped_pattern(alpha, self.hidden_dim, self.cfg.n_groups, tuple(x.shape[:2]),
                               budget, x.device)


class LSTM(SeqModel):
    """LSTM language model: residual blocks of norm -> LSTM mixer -> norm -> MLP."""

    has_mlp = True

    @classmethod
    def mixer_class(cls, cfg: ModelConfig) -> type[Mixer]:
        return LSTMMixer
