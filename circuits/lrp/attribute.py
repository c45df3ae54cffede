"""``attribute``: the relevance of every input token for one logit (docs/methods.md §6).

LRP rule sets ("attnlrp", "cp-lrp", "mambalrp", "lrp"; "auto" = what the mixers declare) run as a
modified forward (:mod:`.rules`) and one backward: the relevance of token ``s`` is
``Σ_d x_{s,d} ∂logit/∂x_{s,d}`` at ``hook_embed`` (token embeddings only; learned position
embeddings enter after the hook and are not counted). Baselines: "gxi" (the same product under
the plain forward), "ig" (integrated gradients from the zero embedding), "smoothgrad" (gradients
averaged over Gaussian embedding noise, times the input) and "rollout" (attention rollout; the
implicit attention of recurrent mixers, docs/methods.md §7).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from seqlens.circuits.lrp.rules import LRP_METHODS, auto_method, lrp_rules
from seqlens.result import Result
from seqlens.validate import check_int

BASELINES = ("gxi", "ig", "smoothgrad", "rollout")
METHODS = ("auto",) + LRP_METHODS + BASELINES


# ----------------------------------------------------------------------------- the result


def token_strings(model, tokens: Tensor) -> list[list[str]]:
    """Readable tokens ``[B][L]``: the model's tokenizer when it has one, else the ids."""
    tok = getattr(model, "tokenizer", None)
    rows = tokens.tolist()
    if tok is None or not hasattr(tok, "decode"):
        return [[str(t) for t in row] for row in rows]
    return [[tok.decode([t]) for t in row] for row in rows]


@dataclass(kw_only=True)
class Attribution(Result):
    """Relevance of each input token for one logit per sequence.

    ``relevance [B, L]``; ``logit [B]`` the explained logit (of the modified forward, which equals
    the model's); ``target [B]`` its token; ``position [B]``; ``tokens [B, L]``; ``method`` the rule
    set or baseline that ran; ``hooks``: ``{hook name: [B, L]}`` relevance of the tensor at each
    requested hook (``Σ`` over its other dims of ``x·∂``); ``conservation [B]`` = Σ relevance / logit
    (1 for a conservative rule set on a bias-free model; not meaningful for "rollout", whose rows
    sum to 1); ``labels``: the tokens as strings; ``position_relevance [B, L]``: the relevance of
    learned position embeddings (``hook_pos_embed``; None for other models), kept apart from the
    tokens' (conservation on such a model: ``Σ relevance + Σ position_relevance = logit``)."""

    relevance: Tensor
    logit: Tensor
    target: Tensor
    position: Tensor
    tokens: Tensor
    method: str
    conservation: Tensor
    hooks: dict[str, Tensor] = field(default_factory=dict)
    labels: list[list[str]] = field(default_factory=list)
    position_relevance: Tensor | None = None

    def to_frame(self):
        import pandas as pd

        rows = []
        for b in range(self.relevance.shape[0]):
            for s in range(self.relevance.shape[1]):
                rows.append(dict(batch=b, pos=s, token=int(self.tokens[b, s]), label=self._label(b, s),
                                 relevance=float(self.relevance[b, s]), method=self.method))
        return pd.DataFrame(rows)

    def _label(self, b: int, s: int) -> str:
        return self.labels[b][s] if self.labels else str(int(self.tokens[b, s]))

    def figure(self):
        """Heat map ``[batch, position]`` of the relevance (red positive, blue negative), tokens as text."""
        import plotly.graph_objects as go

        r = self.relevance.float()
        bound = float(r.abs().max().clamp_min(1e-12))
        text = [[self._label(b, s) for s in range(r.shape[1])] for b in range(r.shape[0])]
        fig = go.Figure(go.Heatmap(z=r.tolist(), text=text, texttemplate="%{text}", colorscale="RdBu_r",
                                   zmin=-bound, zmax=bound, colorbar=dict(title="relevance")))
        fig.update_layout(title=f"{self.method}: relevance for the logit of token(s) {self.target.tolist()}",
                          xaxis_title="position", yaxis_title="sequence", yaxis_autorange="reversed")
        return fig

    def hooks_figure(self, batch: int = 0):
        """Heat map ``[hook, position]`` of the per-hook relevance maps of sequence ``batch`` (e.g.
        ``blocks.{l}.hook_resid_pre`` for every layer: how relevance moves through the depth)."""
        import plotly.graph_objects as go

        if not self.hooks:
            raise ValueError("hooks: this Attribution recorded no hooks; pass attribute(..., hooks=[...])")
        z = torch.stack([m[batch].float() for m in self.hooks.values()])
        bound = float(z.abs().max().clamp_min(1e-12))
        labels = [self._label(batch, s) for s in range(z.shape[1])]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=[f"{s}:{t}" for s, t in enumerate(labels)], y=list(self.hooks),
                                   colorscale="RdBu_r", zmin=-bound, zmax=bound, colorbar=dict(title="relevance")))
        fig.update_layout(title=f"{self.method}: relevance per hook", xaxis_title="position")
        return fig

    def html(self, batch: int = 0) -> str:
        """One sequence as HTML: each token's background red (positive) or blue (negative) with
        opacity ∝ |relevance| / max |relevance|."""
        import html as _html

        r = self.relevance[batch].float()
        bound = float(r.abs().max().clamp_min(1e-12))
        spans = []
        for s, value in enumerate(r.tolist()):
            colour = "255,0,0" if value >= 0 else "0,0,255"
            spans.append(f'<span title="{value:.4g}" style="background: rgba({colour},{abs(value) / bound:.3f})">'
                         f"{_html.escape(self._label(batch, s))}</span>")
        return "<div style='font-family: monospace; white-space: pre-wrap'>" + "".join(spans) + "</div>"


# ----------------------------------------------------------------------------- argument checks


def check_tokens(model, tokens: Any) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens: expected token ids [batch, seq_len] (or [seq_len]), got shape {list(tokens.shape)}")
    return model.check_tokens(tokens.to(model.device))


def check_position(position: Any, B: int, L: int) -> Tensor:
    pos = torch.as_tensor(position, dtype=torch.long).flatten()
    if pos.numel() == 1:
        pos = pos.expand(B)
    if pos.numel() != B:
        raise ValueError(f"position: expected an int or {B} ints (one per sequence), got {pos.numel()}")
    if bool(((pos < -L) | (pos >= L)).any()):
        raise ValueError(f"position: expected values in [-{L}, {L}), got {pos.tolist()}")
    return pos % L


def check_target(target: Any, B: int, V: int) -> Tensor | None:
    if target is None:
        return None
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B or bool(((t < 0) | (t >= V)).any()):
        raise ValueError(f"target: expected a token id in [0, {V}) or {B} of them, got {t.tolist()}")
    return t


# ----------------------------------------------------------------------------- gradients


def _grads(model, tokens: Tensor, position: Tensor, target: Tensor | None, scale: Any = None,
           noise: Tensor | None = None, hooks: Sequence[str] = ()) -> dict[str, Any]:
    """One forward (under whatever rules are installed) with the embedding replaced by a leaf
    ``x·scale + noise``, and one ``autograd.grad`` of the selected logits (no parameter ``.grad``
    is touched). Returns the embedding ``x``, the gradient at the leaf, the logits, the target and
    ``x·∂`` summed over the trailing dims of each requested hook."""
    held: dict[str, Tensor] = {}

    def embed(x: Tensor, hook) -> Tensor:
        held["x"] = x.detach()
        value = held["x"].clone() if scale is None else held["x"] * scale  # a new leaf, not x itself
        held["leaf"] = (value if noise is None else value + noise).requires_grad_(True)
        return held["leaf"]

    def keep(name: str):
        def fn(x: Tensor, hook) -> Tensor:
            held[name] = x
            return x
        return fn
    fwd = [("hook_embed", embed)] + [(h, keep(h)) for h in hooks]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    at = logits[rows, position]  # [B, V]
    tgt = at.argmax(-1) if target is None else target.to(at.device)
    logit = at[rows, tgt]
    live = [h for h in hooks if held[h].requires_grad]  # a detached tensor (a rule's constant) carries none
    grads = torch.autograd.grad(logit.sum(), [held["leaf"]] + [held[h] for h in live], allow_unused=True)
    got = dict(zip(live, grads[1:]))
    maps = {}
    for h in hooks:
        t, g = held[h], got.get(h)
        rel = torch.zeros_like(t) if g is None else t.detach() * g
        maps[h] = rel.reshape(*rel.shape[:2], -1).sum(-1).float()
    return dict(x=held["x"], leaf=held["leaf"].detach(), grad=grads[0], logit=logit.detach(), target=tgt, maps=maps)


def _check_hooks(model, hooks: Sequence[str] | None) -> list[str]:
    if hooks is None:
        return []
    names = [model.resolve_hook_name(h) for h in ([hooks] if isinstance(hooks, str) else hooks)]
    unknown = [h for h in names if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"hooks: unknown hook names {unknown} (see model.hook_names())")
    return names


def integrated_gradients(model, tokens: Tensor, position: Tensor, target: Tensor | None, steps: int,
                         rows: int = 256) -> dict:
    """IG from the zero embedding: ``x · mean_k ∂f(α_k x)`` over the midpoints ``α_k = (k+½)/steps``;
    the path points run batched, at most ``rows`` sequences per forward."""
    steps = check_int("steps", steps, low=1)
    full = _grads(model, tokens, position, target)
    B = tokens.shape[0]
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    per = max(1, rows // B)  # path points per forward
    total = torch.zeros_like(full["grad"])
    for chunk in alphas.split(per):
        n = chunk.numel()
        scale = chunk.repeat_interleave(B).to(full["x"])[:, None, None]  # [n·B, 1, 1], α-major
        g = _grads(model, tokens.repeat(n, 1), position.repeat(n), full["target"].repeat(n), scale=scale)["grad"]
        total += g.view(n, B, *g.shape[1:]).sum(0)
    return dict(full, grad=total / steps)


def smoothgrad(model, tokens: Tensor, position: Tensor, target: Tensor | None, samples: int,
               noise: float, seed: int, rows: int = 256) -> dict:
    """SmoothGrad × input: ``x · mean_k ∂f(x + ε_k)``, ``ε ~ N(0, (noise · std(x))²)`` drawn from
    ``seed`` (on the CPU, so the same on every device); samples batched, ``rows`` per forward."""
    samples = check_int("samples", samples, low=1)
    seed = check_int("seed", seed)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise: expected a non-negative number (noise std / std of the embeddings), got {noise!r}")
    full = _grads(model, tokens, position, target)
    B = tokens.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sigma = noise * float(full["x"].float().std())
    eps = torch.randn(samples * B, *full["x"].shape[1:], generator=gen).to(full["x"]) * sigma  # sample-major
    per = max(1, rows // B)
    total = torch.zeros_like(full["grad"])
    for start in range(0, samples, per):
        n = min(per, samples - start)
        g = _grads(model, tokens.repeat(n, 1), position.repeat(n), full["target"].repeat(n),
                   noise=eps[start * B:(start + n) * B])["grad"]
        total += g.view(n, B, *g.shape[1:]).sum(0)
    return dict(full, grad=total / samples)


@torch.no_grad()
def rollout(model, tokens: Tensor, position: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per layer the head-mean of |pattern| (the implicit
    attention for recurrent mixers, ``model.mixer_pattern``), rows normalised, ``0.5·A + 0.5·I``
    for the residual, multiplied over layers; the row of ``position``. ``[B, L]``, rows sum to 1."""
    B, L = tokens.shape
    eye = torch.eye(L, device=tokens.device)
    joint = eye.expand(B, L, L).clone()
    for layer in range(model.cfg.n_layers):
        a = model.mixer_pattern(tokens, layer).abs().float().mean(1)  # [B, L, L]
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
        joint = (0.5 * a + 0.5 * eye) @ joint
    return joint[torch.arange(B, device=tokens.device), position]


# ----------------------------------------------------------------------------- attribute


def _run(model, method: str, tokens: Tensor, pos: Tensor, tgt: Tensor | None, hooks: list[str], steps: int,
         samples: int, noise: float, seed: int) -> dict:
    """The gradients of ``method`` (see :func:`_grads`); LRP rule sets under their modified forward."""
    if method in LRP_METHODS:
        with lrp_rules(model, method):
            return _grads(model, tokens, pos, tgt, hooks=hooks)
    if method == "ig":
        return integrated_gradients(model, tokens, pos, tgt, steps)
    if method == "smoothgrad":
        return smoothgrad(model, tokens, pos, tgt, samples, noise, seed)
    return _grads(model, tokens, pos, tgt, hooks=hooks)  # gxi; rollout only needs the target


def attribute(model, tokens: Any, target: Any = None, position: int | Sequence[int] = -1, method: str = "auto",
              hooks: Sequence[str] | None = None, steps: int = 32, samples: int = 16, noise: float = 0.1,
              seed: int = 0) -> Attribution:
    """Relevance of every token of ``tokens [B, L]`` for the logit of ``target`` (None: the
    model's argmax) at ``position`` (an int or one per sequence) under ``method`` (module
    docstring; "auto" = the LRP rule set the model's mixers declare). ``hooks``: hook names whose
    per-position relevance ``[B, L]`` to record (tensors laid out ``[B, L, ...]``). ``steps``
    (IG), ``samples`` / ``noise`` / ``seed`` (SmoothGrad). The model's weights, their ``.grad``
    and its forward outside this call are untouched."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    tokens = check_tokens(model, tokens)
    B, L = tokens.shape
    pos = check_position(position, B, L).to(tokens.device)
    tgt = check_target(target, B, model.cfg.vocab_size)
    names = _check_hooks(model, hooks)
    if method == "auto":
        method = auto_method(model)
    if names and method in ("ig", "smoothgrad", "rollout"):
        raise ValueError(f"hooks: per-hook relevance is recorded for the LRP rule sets and 'gxi', not {method!r}")
    learned = "hook_pos_embed" in model.hook_dict and method not in ("ig", "smoothgrad", "rollout")
    wanted = names + ["hook_pos_embed"] if learned and "hook_pos_embed" not in names else names
    g = _run(model, method, tokens, pos, tgt, wanted, steps=steps, samples=samples, noise=noise, seed=seed)
    if method == "rollout":
        relevance = rollout(model, tokens, pos)
    else:
        dtype = torch.promote_types(g["x"].dtype, torch.float32)  # float64 models keep float64
        relevance = (g["x"].to(dtype) * g["grad"].to(dtype)).sum(-1)
    logit = g["logit"].to(torch.promote_types(g["logit"].dtype, torch.float32))
    settings = dict(model=getattr(model, "name", None), arch=model.cfg.arch, method=method,
                    steps=steps if method == "ig" else None, seed=seed if method == "smoothgrad" else None)
    return Attribution(relevance=relevance.detach().cpu(), logit=logit.cpu(), target=g["target"].cpu(),
                       position=pos.cpu(), tokens=tokens.cpu(), method=method,
                       conservation=(relevance.sum(-1) / logit).detach().cpu(),
                       hooks={h: g["maps"][h].detach().cpu() for h in names},
                       position_relevance=g["maps"]["hook_pos_embed"].cpu() if learned else None,
                       labels=token_strings(model, tokens.cpu()), settings=settings)
