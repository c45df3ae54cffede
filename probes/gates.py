"""Gate saturation and interpretable cells (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and
Understanding Recurrent Networks", §4.2 and §4.3), across every gated architecture.

Gate saturation (:func:`gate_saturation`): for each layer and gate, the fraction of gate values
below ``low`` (left-saturated, default 0.1) and above ``high`` (right-saturated, default 0.9),
pooled over every (token, unit) of the data, plus the same fractions per unit (Karpathy's
scatter plot). The gates are each mixer's answer (``Mixer.gates()``, hook names under
``blocks.{l}.mixer``):

=========  ==========================================================================
lstm       input ``i`` (hook_input_gate), forget ``f`` (hook_decay), output ``o``
           (hook_out_gate); ``[D_h]``
mingru     update ``z`` (hook_input_gate) and the decay ``1 − z`` (hook_decay); ``[D_h]``
minlstm    normalised forget ``f'`` (hook_decay) and input ``i'`` (hook_input_gate); ``[D_h]``
mamba      the decay ``exp(Δ_t A)`` per state element (d, n): Δ from hook_delta (after
           softplus), ``A = −exp(A_log) [D, N]``; units ``D·N``
gla        the decay ``g = exp(log g)`` (hook_log_decay); units ``H·d_k``
retnet     the constant decay ``γ_h`` (hook_log_decay): the same for every token, so the
           fractions only say which heads' γ lie past the thresholds; the γ values are
           reported in ``constants`` (``Mixer.gate_constants``)
fox        the forget gate ``f = exp(log f)`` (hook_log_decay); units ``H``
=========  ==========================================================================

Output gates that are not in [0, 1] (Mamba's and GLA's SiLU gates) are not gates in this sense
and are left out. Softmax Transformers have no gates: :class:`NotApplicableError`.

Data: ``tokens`` or the default batch of :func:`~seqlens.probes.outliers.default_batch` (the zoo
recipe's first evaluation batch, else stdlib validation windows for byte models, else random tokens).
Interpretable cells live in :mod:`seqlens.probes.cells` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from seqlens.models.mixer import NotApplicableError, applies_to
from seqlens.result import Result

# interpretable cells (and the Python lexer) live in probes/cells.py / seqlens/corpus.py; re-exported
from seqlens.corpus import PYTHON_FEATURES, python_features  # noqa: F401
from seqlens.probes.cells import (DEFAULT_TEXT_BYTES, CellReport, _capture, default_text,  # noqa: F401
                                  default_unit_hooks, interpretable_cells, pearson)

from .outliers import check_tokens, default_batch
CHUNK_ELEMENTS = 2**24  # values per chunk when counting saturation (Mamba expands by d_state)


# ============================================================================ gate saturation


@dataclass(frozen=True)
class GateSpec:
    """One gate of one layer: read ``hook``'s tensor ``[B, L, ...]`` and map it to gate values
    with ``transform`` (identity, 1 − x, exp, exp(ΔA) ...)."""

    layer: int
    gate: str
    hook: str
    transform: Callable[[Tensor], Tensor]
    description: str


def has_gates(model) -> bool:
    """Whether :func:`gate_saturation` applies: some mixer declares gates (``Mixer.gates``)."""
    return any(m.gates() for m in model.mixers)


def gate_specs(model) -> list[GateSpec]:
    """The gates :func:`gate_saturation` reads: every mixer's ``gates()`` (module docstring)."""
    specs = [GateSpec(l, g.name, f"blocks.{l}.mixer.{g.hook}", g.transform, g.meaning)
             for l, block in enumerate(model.blocks) for g in block.mixer.gates()]
    if not specs:
        raise NotApplicableError(
            f"model: gate_saturation is not applicable to arch {model.cfg.arch!r}: softmax attention has no "
            "gates (gated archs: lstm, mingru, minlstm, mamba, gla, retnet, fox)")
    return specs



def _saturation(raw: Tensor, transform: Callable[[Tensor], Tensor], low: float,
                high: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per-unit ``(left, right, mean)`` fractions of ``transform(raw)`` for a hook tensor ``raw [B,
    L, ...]`` and the number of tokens; tokens go through ``transform`` in chunks of about
    :data:`CHUNK_ELEMENTS` values (Mamba's decay expands each token by ``d_state``)."""
    flat = raw.reshape(-1, *raw.shape[2:])
    n = flat.shape[0]
    rows = max(1, CHUNK_ELEMENTS // max(1, transform(flat[:1]).numel()))
    left = right = total = None
    for chunk in flat.split(rows):
        v = transform(chunk).float().reshape(chunk.shape[0], -1)
        counts = [(v < low).sum(0), (v > high).sum(0), v.sum(0)]
        counts = [c.cpu().double() for c in counts]
        if left is None:
            left, right, total = counts
        else:
            left, right, total = left + counts[0], right + counts[1], total + counts[2]
    return left / n, right / n, total / n, n


@dataclass(kw_only=True)
class GateSaturation(Result):
    """Saturation of every gate of every layer. Rows (aligned lists): ``layers``, ``gates``,
    ``hooks``; ``left`` / ``right`` / ``mean`` ``[R]`` (fractions < ``low``, > ``high``, mean value,
    pooled over tokens and units); ``unit_left`` / ``unit_right`` (per unit, one tensor per row);
    ``n_tokens``; ``constants`` (RetNet: ``{"layer": [γ_h, ...]}``, else empty)."""

    layers: list[int]
    gates: list[str]
    hooks: list[str]
    left: Tensor
    right: Tensor
    mean: Tensor
    unit_left: list[Tensor]
    unit_right: list[Tensor]
    n_tokens: int
    low: float = 0.1
    high: float = 0.9
    constants: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("left", "right", "mean"):
            setattr(self, name, torch.as_tensor(getattr(self, name), dtype=torch.float64))
        self.unit_left = [torch.as_tensor(u, dtype=torch.float64) for u in self.unit_left]
        self.unit_right = [torch.as_tensor(u, dtype=torch.float64) for u in self.unit_right]
        n = len(self.layers)
        for name in ("gates", "hooks", "left", "right", "mean", "unit_left", "unit_right"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} entries (one per row), got {len(getattr(self, name))}")

    def row(self, layer: int, gate: str) -> dict[str, Any]:
        """``{"left", "right", "mean"}`` of one (layer, gate)."""
        for i, (l, g) in enumerate(zip(self.layers, self.gates)):
            if l == layer and g == gate:
                return {"left": float(self.left[i]), "right": float(self.right[i]), "mean": float(self.mean[i])}
        raise ValueError(f"gate: no row ({layer}, {gate!r}); rows: {list(zip(self.layers, self.gates))}")

    def to_frame(self):
        """One row per (layer, gate): ``layer, gate, hook, left, middle, right, mean, units``."""
        import pandas as pd

        return pd.DataFrame({
            "layer": self.layers, "gate": self.gates, "hook": self.hooks, "left": self.left.tolist(),
            "middle": (1 - self.left - self.right).tolist(), "right": self.right.tolist(),
            "mean": self.mean.tolist(), "units": [u.numel() for u in self.unit_left]})

    def figure(self, kind: str = "bars", **layout: Any):
        """``kind="bars"``: stacked bars per layer / gate (left-saturated, unsaturated,
        right-saturated); ``kind="units"``: Karpathy's scatter of each unit's left- vs
        right-saturated fraction, one colour per gate."""
        import plotly.graph_objects as go

        if kind == "units":
            fig = go.Figure()
            for g in dict.fromkeys(self.gates):
                rows = [i for i, x in enumerate(self.gates) if x == g]
                fig.add_trace(go.Scatter(
                    x=torch.cat([self.unit_left[i] for i in rows]).tolist(),
                    y=torch.cat([self.unit_right[i] for i in rows]).tolist(), mode="markers", name=g,
                    text=[f"L{self.layers[i]} {g} unit {u}" for i in rows for u in range(self.unit_left[i].numel())],
                    marker={"size": 4, "opacity": 0.6}))
            fig.update_layout(title=f"Gate saturation per unit (left: < {self.low:g}, right: > {self.high:g})",
                              xaxis_title="fraction left-saturated", yaxis_title="fraction right-saturated",
                              xaxis_range=[0, 1], yaxis_range=[0, 1])
            fig.update_layout(**layout)  # the caller's settings win
            return fig
        if kind != "bars":
            raise ValueError(f"kind: expected 'bars' or 'units', got {kind!r}")
        x = [f"L{l} {g}" for l, g in zip(self.layers, self.gates)]
        fig = go.Figure([
            go.Bar(x=x, y=self.left.tolist(), name=f"< {self.low:g}", marker_color="#4575b4"),
            go.Bar(x=x, y=(1 - self.left - self.right).tolist(), name="unsaturated", marker_color="#d9d9d9"),
            go.Bar(x=x, y=self.right.tolist(), name=f"> {self.high:g}", marker_color="#d73027")])
        fig.update_layout(barmode="stack", title=f"Gate saturation ({self.settings.get('model', '')})",
                          xaxis_title="layer / gate", yaxis_title="fraction of values")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def _check_thresholds(low: Any, high: Any) -> None:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
    if not low < high:
        raise ValueError(f"low: expected low < high, got low={low!r}, high={high!r}")


@applies_to(has_gates)
def gate_saturation(model, tokens: Tensor | None = None, low: float = 0.1, high: float = 0.9, *,
                    batch: int = 16, seq_len: int | None = None, seed: int = 0) -> GateSaturation:
    """Left (< ``low``) and right (> ``high``) saturation of every gate of every layer (module
    docstring), pooled over all tokens of ``tokens [B, L]`` (or the default data,
    :func:`~seqlens.probes.outliers.default_batch`) and all units, and per unit. Softmax
    Transformers raise :class:`NotApplicableError`."""
    _check_thresholds(low, high)
    specs = gate_specs(model)
    if tokens is None:
        data, info = default_batch(model, None, batch, seq_len, seed)
        toks = data.tokens
    else:  # a single token is enough here (no next-token loss)
        toks, info = check_tokens(model, tokens), {"data": "tokens"}
    info.update(batch=toks.shape[0], seq_len=toks.shape[1])
    was_training = model.training
    model.eval()
    try:
        seen = _capture(model, toks.to(model.device), [s.hook for s in specs])
    finally:
        model.train(was_training)
    rows = [_saturation(seen[s.hook], s.transform, low, high) for s in specs]
    constants = {str(l): b.mixer.gate_constants() for l, b in enumerate(model.blocks)
                 if b.mixer.gate_constants() is not None}
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch, **info,
                "low": low, "high": high, "gates": {s.gate: s.description for s in specs},
                "pooling": "every (token, unit) value of the batch"}
    return GateSaturation(layers=[s.layer for s in specs], gates=[s.gate for s in specs],
                          hooks=[s.hook for s in specs], left=torch.stack([r[0].mean() for r in rows]),
                          right=torch.stack([r[1].mean() for r in rows]), mean=torch.stack([r[2].mean() for r in rows]),
                          unit_left=[r[0] for r in rows], unit_right=[r[1] for r in rows], n_tokens=rows[0][3],
                          low=float(low), high=float(high), constants=constants, settings=settings)

