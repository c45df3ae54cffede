"""Token flipping (MambaLRP's faithfulness evaluation, docs/methods.md §6 [P]): replace input tokens in
the order an attribution ranks them and watch the explained logit.

For each sequence the target is the model's prediction at ``position`` on the intact input. Each
method ranks the tokens up to ``position``; after flipping the first ``k`` of them (``k`` on a grid
of ``steps + 1`` fractions from 0 to 1) to ``replacement``, the target's logit is measured. MoRF
flips the most relevant first (a faithful attribution makes the logit fall fast: small area),
LeRF the least relevant first (the logit stays: large area). ``ΔA^F = AUC_LeRF − AUC_MoRF``
(areas by the trapezoid rule over the flipped fraction, of the logit averaged over sequences):
larger is more faithful. ``"random"`` ranks at random (seeded): its ΔA^F is about 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from seqlens.circuits.lrp.attribute import METHODS, attribute, check_position, check_tokens
from seqlens.progress import Progress, progress_bar
from seqlens.result import Result
from seqlens.validate import check_int

ORDERS = ("morf", "lerf", "both")


@dataclass(kw_only=True)
class FlippingCurves(Result):
    """``fractions [S]`` of flipped tokens; ``curves[method][order]`` the mean target logit after
    flipping that fraction (``order`` "morf" / "lerf"), ``[S]``; ``delta_af[method]`` =
    AUC_LeRF − AUC_MoRF (when both orders ran); ``n_sequences``."""

    fractions: Tensor
    curves: dict[str, dict[str, Tensor]]
    delta_af: dict[str, float]
    n_sequences: int

    def auc(self, method: str, order: str) -> float:
        return float(torch.trapezoid(self.curves[method][order], self.fractions))

    def to_frame(self):
        import pandas as pd

        rows = [dict(method=m, order=o, fraction=float(f), logit=float(v))
                for m, per in self.curves.items() for o, c in per.items() for f, v in zip(self.fractions, c)]
        return pd.DataFrame(rows)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for m, per in self.curves.items():
            for o, c in per.items():
                label = f"{m} {o.upper()}" + (f" (ΔA^F={self.delta_af[m]:.3g})" if m in self.delta_af else "")
                fig.add_trace(go.Scatter(x=self.fractions.tolist(), y=c.tolist(), mode="lines+markers", name=label,
                                         line=dict(dash="solid" if o == "morf" else "dot")))
        fig.update_layout(title="Token flipping: target logit vs fraction of tokens flipped",
                          xaxis_title="fraction flipped", yaxis_title="target logit (mean)")
        return fig


def ranking(model, tokens: Tensor, position: Tensor, target: Tensor, method: str, seed: int,
            **kwargs: Any) -> Tensor:
    """``[B, L]``: positions ≤ ``position`` by decreasing relevance for ``target`` (positions after
    it last: they cannot change the logit)."""
    B, L = tokens.shape
    if method == "random":
        score = torch.rand(B, L, generator=torch.Generator().manual_seed(seed))
    else:
        score = attribute(model, tokens, target=target, position=position, method=method, **kwargs).relevance.float()
    after = torch.arange(L)[None, :] > position.cpu()[:, None]
    return score.masked_fill(after, float("-inf")).argsort(-1, descending=True)


@torch.no_grad()
def flip_curve(model, tokens: Tensor, position: Tensor, target: Tensor, order: Tensor, counts: Tensor,
               replacement: int) -> Tensor:
    """Mean target logit after flipping the first ``counts[i]`` positions of ``order``, ``[S]``."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    out = []
    for k in counts.tolist():
        flipped = tokens.clone()
        for b in range(tokens.shape[0]):
            flipped[b, order[b, :k[b]]] = replacement
        logits = model(flipped)[rows, position]
        out.append(logits[rows, target.to(logits.device)].float().mean().cpu())
    return torch.stack(out)


def token_flipping(model, data: Any, methods: Sequence[str] = ("auto", "gxi", "random"), order: str = "both",
                   steps: int = 10, position: int | Sequence[int] = -1, replacement: int = 0, seed: int = 0,
                   progress: Progress = True, **kwargs: Any) -> FlippingCurves:
    """Token-flipping curves and ΔA^F for each of ``methods`` (attribute's methods and "random")
    on ``data`` (token ids ``[B, L]``), flipping to token ``replacement`` on a grid of ``steps``
    fractions. ``kwargs`` go to :func:`attribute` (``steps`` of IG is ``ig_steps`` here). Curves
    and ΔA^F are keyed by the method that ran ("auto" becomes the model's rule set, e.g.
    "mambalrp")."""
    tokens = check_tokens(model, data)
    B, L = tokens.shape
    pos = check_position(position, B, L).to(tokens.device)
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {list(ORDERS)}, got {order!r}")
    bad = [m for m in methods if m not in METHODS + ("random",)]
    if bad or not methods:
        raise ValueError(f"methods: expected names from {list(METHODS) + ['random']}, got {list(methods)}")
    steps = check_int("steps", steps, low=1)
    replacement = check_int("replacement", replacement, low=0, high=model.cfg.vocab_size - 1)
    seed = check_int("seed", seed)
    if "ig_steps" in kwargs:
        kwargs["steps"] = kwargs.pop("ig_steps")
    fractions = torch.linspace(0, 1, steps + 1)
    n = pos.cpu() + 1  # flippable positions per sequence
    counts = torch.stack([(f * n).round().long() for f in fractions])  # [S, B]
    orders = ("morf", "lerf") if order == "both" else (order,)
    curves: dict[str, dict[str, Tensor]] = {}
    with torch.no_grad():  # every method explains the model's prediction on the intact input
        target = model(tokens)[torch.arange(B, device=tokens.device), pos].argmax(-1)
    for method in progress_bar(progress, list(methods), desc="token flipping"):
        name = method if method != "auto" else _auto_name(model)  # curves are keyed by the rule set that ran
        if name in curves:
            continue
        ranked = ranking(model, tokens, pos, target, method, seed, **kwargs)
        curves[name] = {}
        for o in orders:
            rank = ranked if o == "morf" else _reverse(ranked, n)
            curves[name][o] = flip_curve(model, tokens, pos, target, rank, counts, replacement)
    delta = {m: float(torch.trapezoid(c["lerf"], fractions) - torch.trapezoid(c["morf"], fractions))
             for m, c in curves.items() if len(c) == 2}
    return FlippingCurves(fractions=fractions, curves=curves, delta_af=delta, n_sequences=B,
                          settings=dict(model=getattr(model, "name", None), arch=model.cfg.arch, steps=steps,
                                        replacement=replacement, seed=seed, methods=list(methods)))


def _auto_name(model) -> str:
    from seqlens.circuits.lrp.rules import auto_method

    return auto_method(model)


def _reverse(ranked: Tensor, n: Tensor) -> Tensor:
    """LeRF order: the flippable positions (the first ``n[b]`` of each row) reversed."""
    out = ranked.clone()
    for b in range(ranked.shape[0]):
        out[b, :n[b]] = ranked[b, :n[b]].flip(0)
    return out
