"""LRP rules as a modified forward (the Gradient×Input framework of lxt's "efficient" rules and of
MambaLRP): hooks that leave every forward value as it is and change only the backward, so that
``Σ_d x·∂logit/∂x`` at ``hook_embed`` is the relevance. Three primitives:

- detach (``x.detach()``): the tensor is a constant of the explanation (gates, decays, 1/std of
  norms, CP-LRP's queries and keys);
- :func:`divide_gradient` (``y`` forward, ``∂/k`` backward): the uniform rule on a product of
  input-dependent factors (a·b: ÷2 on each factor; softmax(q·k)·v: q ÷4, k ÷4, v ÷2);
- :func:`identity_rule` (``f(p)`` forward, ``∂·f(p)/p`` backward): the identity rule on an
  element-wise activation ``f``, so its output relevance passes to ``p`` unchanged.

The rule set of a mixer is chosen by its declaration ``type(mixer).lrp`` (:class:`LRPRules`:
``method`` and ``family``), never by ``cfg.arch``. :func:`lrp_rules` installs the hooks of a rule
set on a model (TransformerLens hooks, removed on exit) and yields.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.models.mixer import NotApplicableError

HookList = list[tuple[str, Callable]]
LRP_METHODS = ("attnlrp", "cp-lrp", "mambalrp", "lrp")
EPS = 1e-12


class _DivideGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad / ctx.factor, None


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        out = fn(pre)
        eps = max(EPS, torch.finfo(pre.dtype).tiny)  # 1e-12 is 0 in float16: keep the guard non-zero
        safe = torch.where(pre == 0, torch.full_like(pre, eps), pre)
        ctx.save_for_backward(out / safe)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def divide_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged forward, gradient divided by ``factor`` backward (the uniform rule)."""
    return _DivideGradient.apply(x, float(factor))


def identity_rule(fn: Callable[[Tensor], Tensor], pre: Tensor) -> Tensor:
    """``fn(pre)`` forward; backward ``∂·fn(pre)/pre``: the relevance ``pre·∂ = fn(pre)·∂`` of the
    output passes to ``pre`` unchanged (AttnLRP eq. 9, MambaLRP's SiLU rule)."""
    return _IdentityRule.apply(pre, fn)


# ----------------------------------------------------------------------------- hook functions


def detach_hook(x: Tensor, hook=None) -> Tensor:
    return x.detach()


def divide_hook(factor: float) -> Callable:
    return lambda x, hook: divide_gradient(x, factor)


def capture_hook(store: dict, key: str) -> Callable:
    def capture(x: Tensor, hook) -> Tensor:
        store[key] = x
        return x
    return capture


# ----------------------------------------------------------------------------- shared pieces


def norm_hooks(model) -> HookList:
    """Every norm's ``1/std`` a constant (``hook_scale`` detached): the norm is linear."""
    return [(f"{name}.hook_scale", detach_hook) for name, m in model.norm_modules().items()
            if name and hasattr(m, "hook_scale")]


def mlp_hooks(prefix: str, mlp, method: str) -> HookList:
    """Plain MLP: identity rule on the activation. Gated MLP act(gate)⊙lin: identity rule on the
    activation and the uniform rule on the product (AttnLRP), or the gate detached (CP-LRP)."""
    if mlp.fc_gate is not None and method == "cp-lrp":
        return [(f"{prefix}.hook_pre", detach_hook)]
    seen: dict[str, Tensor] = {}
    hooks = [(f"{prefix}.hook_pre", capture_hook(seen, "pre"))]
    if mlp.fc_gate is None:
        return hooks + [(f"{prefix}.hook_post", lambda x, hook: identity_rule(mlp.act, seen.pop("pre")))]
    hooks.append((f"{prefix}.hook_pre_linear", capture_hook(seen, "lin")))
    product = lambda x, hook: divide_gradient(identity_rule(mlp.act, seen.pop("pre")) * seen.pop("lin"), 2)  # noqa: E731
    return hooks + [(f"{prefix}.hook_post", product)]


# ----------------------------------------------------------------------------- mixers


def attention_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """Softmax attention. AttnLRP (lxt ``wrap_attention_forward``): gradient to Q ÷4, K ÷4, V ÷2,
    softmax by its plain gradient (its Gradient×Input is AttnLRP's softmax rule). CP-LRP (lxt
    ``cp_wrap_attention_forward``): Q and K detached, so the pattern is a constant."""
    if method == "cp-lrp":
        return [(f"{prefix}.hook_q", detach_hook), (f"{prefix}.hook_k", detach_hook)]
    return [(f"{prefix}.hook_q", divide_hook(4)), (f"{prefix}.hook_k", divide_hook(4)),
            (f"{prefix}.hook_v", divide_hook(2))]


def fox_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """Forgetting attention. The forget bias ``c_i − c_j`` is an additive term of the logits, so it
    is treated like them: under AttnLRP it receives relevance through the softmax's gradient and
    passes it through ``log σ`` by the identity rule to the linear ``forget`` projection (it is
    not a multiplicative gate on a value, so the gate rule does not apply); under CP-LRP, where
    the attention weights are constants, it is detached with Q and K."""
    hooks = attention_hooks(prefix, mixer, method, seen)
    if method == "cp-lrp":
        return hooks + [(f"{prefix}.hook_log_decay", detach_hook)]
    recompute = lambda x, hook: identity_rule(F.logsigmoid, mixer.forget(seen["x"]).float())  # noqa: E731
    return hooks + [(f"{prefix}.hook_log_decay", recompute)]


def mamba_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """MambaLRP (``FarnoushRJ/MambaLRP``): Δ, B, C detached, so exp(ΔA) and ΔB are constants and
    the scan (with its D skip) is linear in u; SiLU(conv) and SiLU(z) by the identity rule
    (recomputed from the captured conv input / mixer input: no hook exposes the pre-activations);
    the gate product y ⊙ SiLU(z) by the uniform rule (÷2 on both factors); linear layers and the
    conv plain."""
    def conv(u: Tensor, hook) -> Tensor:
        pre, _ = mixer.conv(seen["xs"].transpose(1, 2), None)
        return identity_rule(F.silu, pre).transpose(1, 2)

    def gate(g: Tensor, hook) -> Tensor:
        z = mixer.in_proj(seen["x"]).chunk(2, dim=-1)[1]
        return divide_gradient(identity_rule(F.silu, z), 2)
    return [(f"{prefix}.hook_x", capture_hook(seen, "xs")), (f"{prefix}.hook_conv", conv),
            (f"{prefix}.hook_delta", detach_hook), (f"{prefix}.hook_B", detach_hook),
            (f"{prefix}.hook_C", detach_hook), (f"{prefix}.hook_z", divide_hook(2)),
            (f"{prefix}.hook_out_gate", gate)]


def mamba2_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """MambaLRP on Mamba-2: Δ, B, C detached (the scan and its D skip are linear in x), SiLU(conv)
    of the x channels and SiLU(z) by the identity rule (recomputed from the captured pre-conv x
    and the mixer input), the gate product y ⊙ SiLU(z) by the uniform rule, the gated norm's 1/rms
    detached (the norm is then linear); linear layers and the conv plain."""
    def conv(u: Tensor, hook) -> Tensor:
        D, GN = mixer.d_inner, mixer.n_bc_groups * mixer.d_state
        b_in, c_in = mixer.in_proj(seen["x"]).split([D, D, GN, GN, mixer.n_heads], dim=-1)[2:4]
        pre, _ = mixer.conv(torch.cat([seen["xs"], b_in, c_in], -1).transpose(1, 2), None)
        return identity_rule(F.silu, pre[:, :D].transpose(1, 2)).unflatten(-1, u.shape[-2:])

    def gate(g: Tensor, hook) -> Tensor:
        return divide_gradient(identity_rule(F.silu, mixer.in_proj(seen["x"])[..., :mixer.d_inner]), 2)
    return [(f"{prefix}.hook_x", capture_hook(seen, "xs")), (f"{prefix}.hook_conv", conv),
            (f"{prefix}.hook_delta", detach_hook), (f"{prefix}.hook_B", detach_hook),
            (f"{prefix}.hook_C", detach_hook), (f"{prefix}.hook_z", divide_hook(2)),
            (f"{prefix}.hook_out_gate", gate), (f"{prefix}.norm.hook_scale", detach_hook)]


def linear_attention_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """GLA / RetNet: decays detached; (q·k)·v by AttnLRP's uniform rule (Q ÷4, K ÷4, V ÷2); the
    group norm's 1/rms detached (by :func:`norm_hooks`); the SiLU output gate by the identity rule
    and its product with the normed output by the uniform rule, as MambaLRP's gate."""
    def gate(g: Tensor, hook) -> Tensor:
        return divide_gradient(identity_rule(F.silu, mixer.g_proj(seen["x"])), 2)
    return [(f"{prefix}.hook_q", divide_hook(4)), (f"{prefix}.hook_k", divide_hook(4)),
            (f"{prefix}.hook_v", divide_hook(2)), (f"{prefix}.hook_log_decay", detach_hook),
            (f"{prefix}.g_norm.hook_out", divide_hook(2)), (f"{prefix}.hook_out_gate", gate)]


def minrnn_hooks(prefix: str, mixer, method: str, seen: dict) -> HookList:
    """minGRU / minLSTM: decay and write weight detached (the gate rule: ``w⊙h̃`` passes all its
    relevance to ``h̃``), the candidate activation by the identity rule (recomputed from the
    mixer input); the scan is then linear in h̃."""
    from seqlens.models.mingru import positive_activation

    def candidate(c: Tensor, hook) -> Tensor:
        logits = mixer.in_proj(seen["x"]).chunk(1 + mixer.n_gates, dim=-1)[0]
        return identity_rule(positive_activation, logits)
    return [(f"{prefix}.hook_decay", detach_hook), (f"{prefix}.hook_input_gate", detach_hook),
            (f"{prefix}.hook_candidate", candidate)]


def lstm_cell(mixer) -> Callable:
    """The LSTM cell under the gate rule (Arras et al. 2017): i, f, o detached, tanh(g) and tanh(c)
    by the identity rule, so ``c_t`` and ``h_t`` are linear in the signal. It replaces the instance's
    ``cell`` (the LSTM replays its loop only when a hook changes a value, and a detach changes none,
    so hooks cannot carry these rules); the equations are ``LSTMMixer.cell``'s."""
    def cell(pre: Tensor, h: Tensor, c: Tensor, edit: Callable) -> dict[str, Tensor]:
        i, f, g, o = (pre + mixer.hidden_proj(h)).chunk(4, dim=-1)
        v = {"i": edit("i", torch.sigmoid(i).detach()), "f": edit("f", torch.sigmoid(f).detach()),
             "g": edit("g", identity_rule(torch.tanh, g)), "o": edit("o", torch.sigmoid(o).detach())}
        v["c"] = edit("c", v["f"] * c + v["i"] * v["g"])
        v["h"] = edit("h", v["o"] * identity_rule(torch.tanh, v["c"]))
        return v
    return cell


FAMILIES: dict[str, Callable[..., HookList]] = {
    "attention": attention_hooks, "fox": fox_hooks, "mamba": mamba_hooks, "mamba2": mamba2_hooks,
    "linear_attention": linear_attention_hooks, "minrnn": minrnn_hooks,
}
NEEDS_INPUT = ("fox", "mamba", "mamba2", "linear_attention", "minrnn")  # rules that recompute from the mixer input


def auto_method(model) -> str:
    """The rule set the mixers declare (``type(mixer).lrp.method``); all layers must agree."""
    methods = {type(m).lrp.method for m in model.mixers}
    if len(methods) != 1:
        raise NotApplicableError(f"method: the model's mixers declare different LRP rule sets {sorted(methods)}; "
                                 "pass method= explicitly")
    return methods.pop()


def check_method(model, method: str) -> None:
    """Attention families accept "attnlrp" and "cp-lrp"; the others only the rule set they declare."""
    for m in model.mixers:
        rules = type(m).lrp
        allowed = ("attnlrp", "cp-lrp") if rules.family in ("attention", "fox") else (rules.method,)
        if not rules.family:
            raise NotApplicableError(f"method: mixer {type(m).__name__} declares no LRP rules (LRPRules.family)")
        if method not in allowed:
            raise NotApplicableError(f"method: {method!r} does not apply to {type(m).__name__}; "
                                     f"expected one of {list(allowed)} (or 'auto')")


def rule_hooks(model, method: str) -> HookList:
    """Every hook of rule set ``method`` on ``model``: norms, MLPs and each mixer by its family."""
    hooks = norm_hooks(model)
    for l, block in enumerate(model.blocks):
        family = type(block.mixer).lrp.family
        seen: dict[str, Tensor] = {}
        if family in NEEDS_INPUT:
            hooks.append((f"blocks.{l}.ln1.hook_out", capture_hook(seen, "x")))
        if family in FAMILIES:
            hooks += FAMILIES[family](f"blocks.{l}.mixer", block.mixer, method, seen)
        if block.mlp is not None:
            hooks += mlp_hooks(f"blocks.{l}.mlp", block.mlp, method)
    return hooks


@contextlib.contextmanager
def lrp_rules(model, method: str = "auto") -> Iterator[str]:
    """Install rule set ``method`` ("auto": the mixers' declaration) on ``model`` for the duration
    of the block; yields the method. Forward values are unchanged; hooks and the LSTM cell
    override are removed on exit, whatever happens."""
    method = auto_method(model) if method == "auto" else method
    if method not in LRP_METHODS:
        raise ValueError(f"method: expected 'auto' or one of {list(LRP_METHODS)}, got {method!r}")
    check_method(model, method)
    overridden = []
    try:
        for m in model.mixers:
            if type(m).lrp.family == "lstm":
                m.cell = lstm_cell(m)
                overridden.append(m)
        with model.hooks(fwd_hooks=rule_hooks(model, method)):
            yield method
    finally:
        for m in overridden:
            del m.cell
