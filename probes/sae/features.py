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


def _harvest_for(model, sae: SAE, tokens: Tensor, hook: str | None, positions: list[int] | None,
                 batch_size: int, progress: Progress):
    """``(hook, tokens, store)``: ``hook`` (default the SAE's ``metadata["hook_name"]``) harvested on the
    checked ``tokens``, with vectors of the SAE's ``d_in``."""
    hook = hook or sae.cfg.metadata.get("hook_name")
    if hook is None:
        raise ValueError("hook: the SAE's metadata names no hook_name; pass hook=...")
    tokens = model.check_tokens(tokens)
    store = harvest(model, hook, tokens, positions=positions, batch_size=batch_size, progress=progress)
    if store.d_in != sae.cfg.d_in:
        raise ValueError(f"hook: {hook!r} gives vectors of size {store.d_in}, the SAE expects d_in={sae.cfg.d_in}")
    return hook, tokens, store


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
    hook, tokens, store = _harvest_for(model, sae, tokens, hook, positions, batch_size, progress)
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


# ----------------------------------------------------------------------------- the browser's table

SORT_KEYS = ("frequency", "max_activation")


@dataclass(kw_only=True)
class FeatureTable(Result):
    """Every latent of an SAE at a glance, for a feature browser. Per latent ``i``:
    ``frequency[i]`` (share of samples it fires on), ``max_activation[i]``, ``top_tokens[i]`` (the
    distinct tokens at its ``top`` largest activations, largest first) and ``top_context[i]`` (the
    text around its largest activation; "" for a latent that never fired)."""

    hook: str
    n_samples: int
    frequency: Tensor
    max_activation: Tensor
    top_tokens: list[list[str]] = field(default_factory=list)
    top_context: list[str] = field(default_factory=list)

    def order(self, by: str = "frequency", descending: bool = True) -> list[int]:
        """Latent indices sorted by ``by`` ("frequency" or "max_activation"); ties by index."""
        if by not in SORT_KEYS:
            raise ValueError(f"by: expected one of {list(SORT_KEYS)}, got {by!r}")
        key = getattr(self, by).double()
        return torch.argsort(-key if descending else key, stable=True).tolist()

    def search(self, query: str, among: list[int] | None = None) -> list[int]:
        """The latents (of ``among``, in its order; default all) whose top tokens or top context
        contain ``query`` (case-insensitive); an empty query matches every latent."""
        if not isinstance(query, str):
            raise TypeError(f"query: expected a string, got {type(query).__name__}")
        among = list(range(len(self.top_context))) if among is None else among
        q = query.lower()
        return [i for i in among if not q or q in self.top_context[i].lower()
                or any(q in t.lower() for t in self.top_tokens[i])]

    def to_frame(self, features: list[int] | None = None):
        """``feature, frequency, max_activation, top_tokens, top_context`` for ``features`` (default all)."""
        import pandas as pd

        features = list(range(len(self.top_context))) if features is None else features
        rows = [{"feature": i, "frequency": float(self.frequency[i]), "max_activation": float(self.max_activation[i]),
                 "top_tokens": " ".join(repr(t) for t in self.top_tokens[i]), "top_context": self.top_context[i]}
                for i in features]
        return pd.DataFrame(rows, columns=["feature", "frequency", "max_activation", "top_tokens", "top_context"])

    def figure(self):
        """Max activation against firing frequency, one point per latent (hover: its top tokens)."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=self.frequency.tolist(), y=self.max_activation.tolist(), mode="markers",
                                   text=[" ".join(repr(t) for t in ts) for ts in self.top_tokens],
                                   customdata=list(range(len(self.top_tokens))),
                                   hovertemplate="feature %{customdata}<br>%{text}<extra></extra>"))
        fig.update_layout(title=f"latents of the SAE at {self.hook}", xaxis_title="firing frequency",
                          yaxis_title="max activation", xaxis_type="log")
        return fig


@torch.no_grad()
def _running_top(sae: SAE, store, top: int, batch_size: int = 4096) -> tuple[Tensor, Tensor, Tensor]:
    """``(fires [d_sae], values [top, d_sae], rows [top, d_sae])``: firing counts and each latent's
    ``top`` largest activations with their global row indices, streamed over the store's shards."""
    dev, d = sae.W_dec.device, sae.cfg.d_sae
    fires = torch.zeros(d, dtype=torch.long)
    values = torch.full((0, d), -float("inf"))
    rows = torch.zeros(0, d, dtype=torch.long)
    start = 0
    for acts, _ in store.iter_shards():
        for x in acts.split(batch_size):
            f = sae.encode(x.to(dev, torch.float32)).float().cpu()
            fires += (f > 0).sum(0)
            idx = torch.arange(start, start + len(f))[:, None].expand_as(f)
            values, pick = torch.cat([values, f]).topk(min(top, len(values) + len(f)), dim=0)
            rows = torch.cat([rows, idx]).gather(0, pick)
            start += len(f)
    return fires, values, rows


def feature_table(model, sae: SAE, tokens: Tensor, hook: str | None = None, positions: list[int] | None = None,
                  top: int = 5, window: int = 8, batch_size: int = 16, progress: Progress = False) -> FeatureTable:
    """The :class:`FeatureTable` of every latent of ``sae`` on ``tokens [B, L]`` (one harvest of
    ``hook``, default the SAE's ``metadata["hook_name"]``; ``positions`` as in :func:`harvest`)."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a seqlens SAE, got {type(sae).__name__}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected a positive integer, got {top!r}")
    hook, tokens, store = _harvest_for(model, sae, tokens, hook, positions, batch_size, progress)
    fires, values, rows = _running_top(sae, store, top)
    loc, toks = store.locations(), tokens.cpu()
    top_tokens, top_context = [], []
    for i in range(sae.cfg.d_sae):
        hits = [int(r) for v, r in zip(values[:, i].tolist(), rows[:, i].tolist()) if v > 0]
        texts = [token_text(model, int(toks[loc[r, 0], loc[r, 1]])) for r in hits]
        top_tokens.append(list(dict.fromkeys(texts)))  # distinct, largest activation first
        top_context.append("" if not hits else _window_text(model, toks, loc[hits[0]], window))
    n = max(len(store), 1)
    return FeatureTable(hook=hook, n_samples=len(store), frequency=fires.float() / n,
                        max_activation=values[0].clamp_min(0) if len(values) else torch.zeros(sae.cfg.d_sae),
                        top_tokens=top_tokens, top_context=top_context,
                        settings={"model_name": getattr(model, "name", None) or model.cfg.arch,
                                  "architecture": sae.architecture, "top": top})


def _window_text(model, tokens: Tensor, where: Tensor, window: int) -> str:
    seq, pos = int(where[0]), int(where[1])
    lo, hi = max(0, pos - window), min(tokens.shape[1], pos + 3)
    return "".join(token_text(model, int(t)) for t in tokens[seq, lo:hi])
