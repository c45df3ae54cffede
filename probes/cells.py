"""Interpretable cells (Karpathy, Johnson & Fei-Fei 2015, §4.3; :func:`interpretable_cells`): Pearson correlation, over the byte positions
of a Python source text, between each unit of a hook and byte-level features of the text
(:func:`python_features`). The unit at position t is the activation after reading byte t; the
feature at t describes byte t. Default units, every layer: the mixer's ``memory_hook`` (the
units that carry memory):

=========  ==========================================================================
lstm       the cell ``c`` (hook_c), as in Karpathy et al.
mingru     the hidden state ``h`` (hook_z; also minlstm)
mamba      the per-channel scan output ``y_d = C_t·h_{t,d} + D_d u_{t,d}`` (hook_z):
           one read-out of each channel's N-dimensional state (the full state would be
           ``D·N`` units)
gla        the per-head read-out ``q_t S_t`` (hook_z, flattened to ``H·d_v`` units)
attention  the MLP neurons (mlp.hook_post; hook_resid_post for attention-only models)
=========  ==========================================================================

Any hook whose tensor is ``[batch, seq, ...]`` can be chosen instead (trailing dims flattened).

Data: a Python source text (default: the first 8192 bytes of the stdlib validation split, which start at
a file start, so the scanner starts in a known state; the lexer is :func:`seqlens.corpus.python_features`);
recurrent models read it as one sequence from an empty state, attention models in consecutive windows of
their training length.
"""

from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from seqlens.corpus import PYTHON_FEATURES, _as_bytes, python_features  # noqa: F401 - re-exported
from seqlens.result import Result

from .outliers import is_byte_model

DEFAULT_TEXT_BYTES = 8192

def _capture(model, tokens: Tensor, hooks: Sequence[str]) -> dict[str, Tensor]:
    """Run ``model(tokens)`` and return the last value each hook saw (observing hooks: an LSTM
    whose gates a user hook edits calls its hooks once per step during the replay, then once on
    the whole sequence, the value kept; see models/lstm.py)."""
    seen: dict[str, Tensor] = {}

    def keep(value: Tensor, hook) -> None:
        seen[hook.name] = value.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(h, keep) for h in dict.fromkeys(hooks)]):
        model(tokens)
    missing = [h for h in hooks if h not in seen]
    if missing:
        raise ValueError(f"hook: {missing} did not fire on a forward pass (e.g. hook_state fires only "
                         "inside tap_states)")
    return seen


# ============================================================================ interpretable cells


def default_unit_hooks(model) -> list[str]:
    """The memory-carrying units of every layer (module docstring)."""
    L = model.cfg.n_layers
    memory = model.blocks[0].mixer.memory_hook
    suffix = None if memory is None else f"mixer.{memory}"
    if suffix is None:  # attention: MLP neurons
        suffix = "mlp.hook_post" if model.blocks[0].mlp is not None else "hook_resid_post"
    return [f"blocks.{l}.{suffix}" for l in range(L)]


def _resolve_hooks(model, hook) -> list[str]:
    hooks = default_unit_hooks(model) if hook is None else [hook] if isinstance(hook, str) else list(hook)
    if not hooks or not all(isinstance(h, str) for h in hooks):
        raise ValueError(f"hook: expected a hook name or a list of hook names, got {hook!r}")
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"hook: unknown hook names {unknown}; e.g. {default_unit_hooks(model)}")
    return hooks


def _resolve_features(features, b: bytes) -> dict[str, Tensor]:
    builtin = python_features(b)
    if features is None:
        return builtin
    if isinstance(features, str):
        features = [features]
    if isinstance(features, Mapping):
        out = {}
        for name, f in features.items():
            if isinstance(f, str) and f not in builtin:
                raise ValueError(f"features: {name!r} names no built-in feature {list(PYTHON_FEATURES)}")
            v = builtin[f] if isinstance(f, str) else f(b) if callable(f) else f
            v = torch.as_tensor(v, dtype=torch.float32).flatten()
            if v.numel() != len(b):
                raise ValueError(f"features: {name!r} has {v.numel()} values for a {len(b)}-byte text")
            out[str(name)] = v
        return out
    names = list(features)
    unknown = [f for f in names if f not in builtin]
    if unknown or not names:
        raise ValueError(f"features: expected names from {list(PYTHON_FEATURES)} or a mapping name -> "
                         f"callable(bytes) / values, got {features!r}")
    return {f: builtin[f] for f in names}


def default_text(n_bytes: int = DEFAULT_TEXT_BYTES) -> bytes:
    """The first ``n_bytes`` of the stdlib corpus' validation split (it starts at a file start, so
    the feature scanner starts in a known state; files are separated by NUL)."""
    from seqlens.corpus import StdlibCorpus

    return StdlibCorpus().text("val")[:n_bytes]


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of every column of ``x [T, U]`` with every column of ``y [T, K]``:
    ``[U, K]`` (float64); NaN where a column is constant."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    nx, ny = x.norm(dim=0), y.norm(dim=0)
    c = (x.T @ y) / (nx[:, None] * ny[None, :])
    return c.masked_fill((nx[:, None] == 0) | (ny[None, :] == 0), float("nan")).clamp(-1, 1)


def _run_units(model, ids: Tensor, hooks: list[str], window: int | None) -> tuple[Tensor, list[str]]:
    """Activations ``[T, U]`` of the hooks' units on ``ids [T]`` (one sequence, or consecutive
    windows each from an empty state) and the unit names ``"{hook}[{i}]"``."""
    n = ids.numel()
    W = n if window is None else window
    starts = list(range(0, n, W))
    full = [s for s in starts if s + W <= n]
    batches = ([torch.stack([ids[s:s + W] for s in full])] if full else []) + \
        ([ids[starts[-1]:][None]] if len(full) < len(starts) else [])
    parts, widths = [], {}
    for toks in batches:
        seen = _capture(model, toks.to(model.device), hooks)
        units = []
        for h in hooks:
            t = seen[h]
            if t.dim() < 2 or tuple(t.shape[:2]) != tuple(toks.shape):
                raise ValueError(f"hook: {h} gives a tensor of shape {list(t.shape)}, expected "
                                 f"[batch, seq, ...] = {list(toks.shape)} + units")
            units.append(t.reshape(*t.shape[:2], -1).float().cpu())
            widths[h] = units[-1].shape[-1]
        parts.append(torch.cat(units, -1).reshape(toks.numel(), -1))
    names = [f"{h}[{i}]" for h in hooks for i in range(widths[h])]
    return torch.cat(parts), names


@dataclass(kw_only=True)
class CellReport(Result):
    """Correlation of units with text features. ``tokens [T]`` (the text's bytes), ``units`` (names
    ``"{hook}[{i}]"``), ``features``, ``corr [U, K]`` (Pearson over positions; NaN for constant
    units), ``feature_values [K, T]``, ``stored_units`` (the union of every feature's top units)
    and their ``activations [T, S]``, ``top_k``."""

    tokens: Tensor
    units: list[str]
    features: list[str]
    corr: Tensor
    feature_values: Tensor
    stored_units: list[str]
    activations: Tensor
    top_k: int = 5

    def __post_init__(self) -> None:
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.int64)
        self.corr = torch.as_tensor(self.corr, dtype=torch.float64)
        self.feature_values = torch.as_tensor(self.feature_values, dtype=torch.float32)
        self.activations = torch.as_tensor(self.activations, dtype=torch.float32)
        if tuple(self.corr.shape) != (len(self.units), len(self.features)):
            raise ValueError(f"corr: expected shape [{len(self.units)}, {len(self.features)}], "
                             f"got {list(self.corr.shape)}")

    @property
    def text(self) -> str:
        return bytes(self.tokens.tolist()).decode("utf-8", errors="replace")

    def top(self, feature: str, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` (default ``top_k``) units most correlated with ``feature`` by |corr|, as
        ``(unit, signed corr)``, best first (NaN last)."""
        if feature not in self.features:
            raise ValueError(f"feature: expected one of {self.features}, got {feature!r}")
        k = self.top_k if k is None else k
        c = self.corr[:, self.features.index(feature)]
        order = torch.argsort(torch.nan_to_num(c.abs(), nan=-1.0), descending=True, stable=True)[:k]
        return [(self.units[i], float(c[i])) for i in order.tolist()]

    def to_frame(self):
        """One row per (feature, rank): ``feature, rank, unit, corr``."""
        import pandas as pd

        rows = [(f, r, u, c) for f in self.features for r, (u, c) in enumerate(self.top(f))]
        return pd.DataFrame(rows, columns=["feature", "rank", "unit", "corr"])

    def figure(self, all_units: bool = False, **layout: Any):
        """Heatmap of |corr|, units × features (the stored top units, or every unit), signed
        correlation in the hover text."""
        import plotly.graph_objects as go

        names = self.units if all_units else self.stored_units
        rows = self.corr[[self.units.index(u) for u in names]]
        hover = [[f"{u} · {f}: {rows[i, j]:+.3f}" for j, f in enumerate(self.features)] for i, u in enumerate(names)]
        z = [[None if math.isnan(v) else abs(v) for v in r] for r in rows.tolist()]
        fig = go.Figure(go.Heatmap(z=z, x=self.features, y=names, text=hover, hoverinfo="text",
                                   colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": "|corr|"}))
        layout = {"height": max(400, 16 * len(names)), **layout}  # the caller's height wins
        fig.update_layout(title=f"Unit–feature correlation ({self.settings.get('model', '')})",
                          xaxis_title="feature", yaxis_title="unit")
        fig.update_layout(**layout)  # the caller's settings win
        return fig

    def html(self, key: str | None = None, max_bytes: int | None = None) -> str:
        """The text as HTML (``<pre>``), each character's background coloured by a unit's
        activation (red positive, blue negative, opacity ∝ |a| / max |a| over the text; hover shows
        the value and the feature). ``key``: a feature name (its top unit), a stored unit name, or
        None (the top unit of the first feature). ``max_bytes`` truncates the text."""
        unit, feat = self._resolve_key(key)
        a = self.activations[:, self.stored_units.index(unit)]
        b = bytes(self.tokens.tolist())
        n = len(b) if max_bytes is None else min(len(b), int(max_bytes))
        scale = float(a[:n].abs().max()) or 1.0
        fv = self.feature_values[self.features.index(feat)] if feat is not None else None
        spans, i = [], 0
        while i < n:  # group UTF-8 continuation bytes with their lead byte; colour by the last byte
            j = i + 1
            while j < n and (b[j] & 0xC0) == 0x80:
                j += 1
            ch, v = b[i:j].decode("utf-8", errors="replace"), float(a[j - 1])
            alpha = min(1.0, abs(v) / scale)
            rgb = "215,48,39" if v >= 0 else "69,117,180"
            tip = f"{v:+.3f}" + (f" | {feat}={float(fv[j - 1]):g}" if fv is not None else "")
            shown = "\u2400" if ch == "\x00" else _html.escape(ch)
            spans.append(f'<span style="background-color:rgba({rgb},{alpha:.3f})" '
                         f'title="{_html.escape(tip)}">{shown}</span>')
            i = j
        head = f"<div><b>{_html.escape(unit)}</b>"
        if feat is not None:
            r = float(self.corr[self.units.index(unit), self.features.index(feat)])
            head += f" — top unit for <i>{_html.escape(feat)}</i> (corr {r:+.3f})"
        head += "</div>"
        return head + '<pre style="font-family:monospace;line-height:1.3">' + "".join(spans) + "</pre>"

    def _resolve_key(self, key: str | None) -> tuple[str, str | None]:
        if key is None:
            key = self.features[0]
        if key in self.features:
            return self.top(key, 1)[0][0], key
        if key in self.stored_units:
            return key, None
        raise ValueError(f"key: expected a feature {self.features} or a stored unit (the top units, e.g. "
                         f"{self.stored_units[:3]}), got {key!r}")


def _default_window(model) -> int | None:
    """None (one sequence) for recurrent models; the training length (recipe ``seq_len``, else
    ``n_ctx``) for attention models, whose positions do not extrapolate."""
    if model.cfg.is_recurrent:
        return None
    recipe = getattr(model, "recipe", None)
    seq = getattr(recipe, "data_kwargs", {}).get("seq_len") if recipe is not None else None
    return int(seq or model.cfg.n_ctx)


def interpretable_cells(model, text: str | bytes | None = None, hook: str | Sequence[str] | None = None,
                        features: Sequence[str] | Mapping[str, Any] | None = None, top_k: int = 5, *,
                        window: int | None | str = "auto") -> CellReport:
    """Correlate every unit of ``hook`` (default: the memory units of every layer, module
    docstring) with byte-level features of a Python source ``text`` (default: :func:`default_text`,
    8192 bytes of the stdlib validation split) and rank the ``top_k`` units per feature.

    ``features``: None (all of :data:`PYTHON_FEATURES`), a list of their names, or a mapping
    ``name -> callable(bytes) -> values | values [n_bytes] | builtin name``. ``window``: ``"auto"``
    (one sequence for recurrent models, the training length for attention models), None (one
    sequence) or a length: the text runs as consecutive windows, each from an empty state, while
    the features are computed on the whole text. Byte-level models only (token = byte)."""
    if not is_byte_model(model):
        raise ValueError(f"model: interpretable_cells needs a byte-level model (token = byte, vocab 256), "
                         f"got vocab_size {model.cfg.vocab_size} with tokenizer {type(model.tokenizer).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected a positive integer, got {top_k!r}")
    b = default_text() if text is None else _as_bytes(text)
    if len(b) < 2:
        raise ValueError(f"text: expected at least 2 bytes, got {len(b)}")
    window = _default_window(model) if window == "auto" else window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window: expected 'auto', None or a positive integer, got {window!r}")
    hooks = _resolve_hooks(model, hook)
    feats = _resolve_features(features, b)
    ids = torch.tensor(list(b), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        acts, units = _run_units(model, ids, hooks, window)
    finally:
        model.train(was_training)
    F = torch.stack(list(feats.values()), 1)  # [T, K]
    corr = pearson(acts, F)
    report = CellReport(tokens=ids, units=units, features=list(feats), corr=corr, feature_values=F.T,
                        stored_units=[], activations=torch.zeros(len(b), 0), top_k=top_k)
    stored = list(dict.fromkeys(u for f in feats for u, _ in report.top(f)))
    report.stored_units = stored
    report.activations = acts[:, [units.index(u) for u in stored]]
    report.settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                       "hooks": hooks, "text": "stdlib:val[:%d]" % len(b) if text is None else "given",
                       "n_bytes": len(b), "window": window, "correlation": "Pearson over byte positions",
                       "alignment": "unit after reading byte t vs feature of byte t",
                       "features": "python_features (byte-level scanner)" if features is None else list(feats)}
    return report
