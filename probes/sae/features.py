"""``feature_report``: what one SAE latent responds to and what it does.

- top-activating contexts (the activating token highlighted; ``html()``),
- the histogram of its non-zero activations and its firing frequency,
- logit effects for SAEs on hooks that write into the residual stream: the decoder direction
  through the direct path to the unembedding (``ln_final`` then ``unembed``, the convention of SAE
  dashboards' "logit lens" of a feature),
- for SAEs on ``hook_state``: the state entries the latent reads (its encoder column, reshaped to
  the tapped state's layout, largest weights first).
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from seqlens.progress import Progress
from seqlens.probes.sae.arch import SAE
from seqlens.probes.sae.store import harvest, is_state_hook
from seqlens.result import Result

RESIDUAL_SUFFIXES = ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "mixer.hook_out",
                     "mlp.hook_out")


@dataclass(kw_only=True)
class FeatureReport(Result):
    """One latent's report. ``contexts``: dicts ``seq, pos, activation, tokens`` (strings of the
    window) and ``highlight`` (the activating token's index in ``tokens``); ``activations``: its
    non-zero activations; ``logit_top`` / ``logit_bottom``: ``(token, effect)``; ``state_reads``:
    dicts ``index`` (into ``vector_shape``) and ``weight``."""

    feature: int
    hook: str
    frequency: float
    contexts: list[dict[str, Any]] = field(default_factory=list)
    activations: Tensor = field(default_factory=lambda: torch.zeros(0))
    logit_top: list[tuple[str, float]] = field(default_factory=list)
    logit_bottom: list[tuple[str, float]] = field(default_factory=list)
    state_reads: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self):
        """The top contexts: ``rank, seq, pos, activation, token, context``."""
        import pandas as pd

        rows = [{"rank": i, "seq": c["seq"], "pos": c["pos"], "activation": c["activation"],
                 "token": c["tokens"][c["highlight"]], "context": "".join(c["tokens"])}
                for i, c in enumerate(self.contexts)]
        return pd.DataFrame(rows, columns=["rank", "seq", "pos", "activation", "token", "context"])

    def figure(self, **layout: Any):
        """Activation histogram beside the logit effects (residual hooks) or the state entries
        read (state hooks)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        right = "logit effects" if self.logit_top else "state entries read" if self.state_reads else ""
        fig = make_subplots(rows=1, cols=2, subplot_titles=("activations (non-zero)", right))
        fig.add_trace(go.Histogram(x=self.activations.tolist(), nbinsx=40, name="activation"), row=1, col=1)
        if self.logit_top:
            pairs = self.logit_bottom[::-1] + self.logit_top[::-1]
            fig.add_trace(go.Bar(x=[v for _, v in pairs], y=[repr(t) for t, _ in pairs], orientation="h",
                                 name="logit effect"), row=1, col=2)
        elif self.state_reads:
            fig.add_trace(go.Bar(x=[r["weight"] for r in self.state_reads][::-1],
                                 y=[str(tuple(r["index"])) for r in self.state_reads][::-1], orientation="h",
                                 name="encoder weight"), row=1, col=2)
        fig.update_layout(title=f"feature {self.feature} at {self.hook} (fires on {self.frequency:.2%})",
                          showlegend=False)
        fig.update_layout(**layout)
        return fig

    def html(self) -> str:
        """The top contexts as HTML, the activating token in ``<mark>``."""
        lines = []
        for c in self.contexts:
            parts = [(f"<mark>{_html.escape(t)}</mark>" if i == c["highlight"] else _html.escape(t))
                     for i, t in enumerate(c["tokens"])]
            lines.append(f"<div><code>{c['activation']:.3f}</code> <span style='white-space:pre'>{''.join(parts)}"
                         f"</span></div>")
        return f"<div class='seqlens-feature'><b>feature {self.feature}</b>{''.join(lines)}</div>"


def token_text(model, token: int) -> str:
    """A readable string for one token id: the model's tokenizer when it has one, bytes for
    byte-level vocabularies, else ``⟨id⟩``."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "decode"):
        try:
            return tok.decode([token])
        except Exception:  # a tokenizer that cannot decode one id: fall back to the id
            pass
    if model.cfg.vocab_size == 256:
        return bytes([token]).decode("utf-8", errors="replace")
    return f"⟨{token}⟩"


@torch.no_grad()
def _feature_acts(sae: SAE, rows: Tensor, feature: int, batch_size: int = 4096) -> Tensor:
    dev = sae.W_dec.device
    return torch.cat([sae.encode(x.to(dev, torch.float32))[:, feature].cpu() for x in rows.split(batch_size)])


def _contexts(model, tokens: Tensor, loc: Tensor, acts: Tensor, top: int, window: int) -> list[dict[str, Any]]:
    order = torch.argsort(acts, descending=True, stable=True)[:top]
    out = []
    for i in order.tolist():
        if acts[i] <= 0:
            break
        seq, pos = int(loc[i, 0]), int(loc[i, 1])
        lo, hi = max(0, pos - window), min(tokens.shape[1], pos + 3)
        out.append({"seq": seq, "pos": pos, "activation": float(acts[i]),
                    "tokens": [token_text(model, int(t)) for t in tokens[seq, lo:hi]], "highlight": pos - lo})
    return out


@torch.no_grad()
def logit_effects(model, direction: Tensor, n: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """``(top, bottom)`` tokens of ``unembed(ln_final(direction))``."""
    p = model.unembed.weight
    logits = model.unembed(model.ln_final(direction.to(p.device, p.dtype)[None, None]))[0, 0].float().cpu()
    n = min(n, logits.numel())
    top, bottom = torch.topk(logits, n), torch.topk(-logits, n)
    return ([(token_text(model, int(i)), float(v)) for v, i in zip(top.values, top.indices)],
            [(token_text(model, int(i)), -float(v)) for v, i in zip(bottom.values, bottom.indices)])


def _state_reads(sae: SAE, feature: int, shape: list[int], n: int) -> list[dict[str, Any]]:
    w = sae.W_enc[:, feature].detach().float().cpu()
    order = torch.argsort(w.abs(), descending=True)[:n]
    return [{"index": [int(v) for v in torch.unravel_index(i, tuple(shape))] if shape else [int(i)],
             "weight": float(w[i])} for i in order]


def feature_report(model, sae: SAE, feature: int, tokens: Tensor, hook: str | None = None,
                   positions: list[int] | None = None, top: int = 10, window: int = 8, n_logits: int = 10,
                   batch_size: int = 16, progress: Progress = False) -> FeatureReport:
    """The report of latent ``feature`` of ``sae`` on ``tokens [B, L]`` (module docstring).
    ``hook`` defaults to the SAE's ``metadata["hook_name"]``; ``positions`` as in :func:`harvest`
    (state hooks tap every position unless given)."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a seqlens SAE, got {type(sae).__name__}")
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"feature: expected an integer in [0, {sae.cfg.d_sae}), got {feature!r}")
    hook = hook or sae.cfg.metadata.get("hook_name")
    if hook is None:
        raise ValueError("hook: the SAE's metadata names no hook_name; pass hook=...")
    tokens = model.check_tokens(tokens)
    store = harvest(model, hook, tokens, positions=positions, batch_size=batch_size, progress=progress)
    if store.d_in != sae.cfg.d_in:
        raise ValueError(f"hook: {hook!r} gives vectors of size {store.d_in}, the SAE expects d_in={sae.cfg.d_in}")
    acts = _feature_acts(sae, store.to_tensor(), feature)
    report = FeatureReport(feature=feature, hook=hook, frequency=float((acts > 0).float().mean()),
                           contexts=_contexts(model, tokens.cpu(), store.locations(), acts, top, window),
                           activations=acts[acts > 0],
                           settings={"model_name": getattr(model, "name", None) or model.cfg.arch,
                                     "architecture": sae.architecture, "n_samples": len(store)})
    if is_state_hook(hook):
        report.state_reads = _state_reads(sae, feature, store.info.get("vector_shape", []), n_logits)
    elif hook.endswith(RESIDUAL_SUFFIXES) and sae.cfg.d_in == model.cfg.d_model:
        report.logit_top, report.logit_bottom = logit_effects(model, sae.W_dec[feature].detach(), n_logits)
    return report
