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

Interpretable cells (:func:`interpretable_cells`): Pearson correlation, over the byte positions
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

Data: gate saturation runs on ``tokens`` or the default batch of
:func:`~seqlens.probes.outliers.default_batch` (the zoo recipe's first evaluation batch, else
stdlib validation windows for byte models, else random tokens). Interpretable cells run on a
Python source text (default: the first 8192 bytes of the stdlib validation split, which start at
a file start, so the scanner starts in a known state); recurrent models read it as one sequence
from an empty state, attention models in consecutive windows of their training length.
"""

from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from seqlens.models.mixer import NotApplicableError, applies_to
from seqlens.result import Result

from .outliers import check_tokens, default_batch, is_byte_model

CHUNK_ELEMENTS = 2**24  # values per chunk when counting saturation (Mamba expands by d_state)
DEFAULT_TEXT_BYTES = 8192


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


# ============================================================================ text features

PYTHON_FEATURES = ("in_string", "in_comment", "bracket_depth", "indent", "line_pos")
_QUOTES = (ord("'"), ord('"'))
_OPEN, _CLOSE = set(b"([{"), set(b")]}")


def _as_bytes(text: Any, name: str = "text") -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    raise ValueError(f"{name}: expected str or bytes, got {type(text).__name__}")


def _string_end(b: bytes, i: int) -> int:
    """End (exclusive) of the string literal whose opening quote is at ``i``: past the closing
    quote(s); a backslash always skips the next byte (also in raw strings, where ``\\"`` does not
    close the literal either); an unclosed single-quoted literal stops before the newline, any
    literal before a NUL (file boundary) or at the end of the text."""
    q = b[i]
    triple = b[i:i + 3] == bytes([q]) * 3
    j = i + (3 if triple else 1)
    while j < len(b):
        c = b[j]
        if c == 0 or (c == 10 and not triple):
            return j
        if c == 92:  # backslash
            j += 2
            continue
        if c == q and (not triple or b[j:j + 3] == bytes([q]) * 3):
            return j + (3 if triple else 1)
        j += 1
    return len(b)


_PREFIXES = {b"r", b"u", b"b", b"f", b"br", b"rb", b"fr", b"rf"}


def _is_name_byte(c: int) -> bool:
    return c == 95 or c >= 128 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122


def _prefix_len(b: bytes, i: int) -> int:
    """Length of the string prefix (``r``, ``b``, ``f``, ``u``, ``br``, ``rf``, ... any case)
    right before the quote at ``i``: 0 when the letters there are the end of a longer name."""
    for k in (2, 1):
        if i - k >= 0 and b[i - k:i].lower() in _PREFIXES and (i - k == 0 or not _is_name_byte(b[i - k - 1])):
            return k
    return 0


def _scan_code(b: bytes) -> tuple[list[int], list[int], list[int]]:
    """``(in_string, in_comment, bracket_depth)`` per byte (see :func:`python_features`)."""
    n = len(b)
    string, comment, depth = [0] * n, [0] * n, [0] * n
    d, i = 0, 0
    while i < n:
        c = b[i]
        if c == 0:  # NUL separates files in the corpus: reset
            d, i = 0, i + 1
            continue
        if c == 35:  # '#': comment to the end of the line
            j = i
            while j < n and b[j] not in (10, 0):
                j += 1
            comment[i:j] = [1] * (j - i)
            depth[i:j] = [d] * (j - i)
            i = j
            continue
        if c in _QUOTES:
            j, k = _string_end(b, i), i - _prefix_len(b, i)
            string[k:j] = [1] * (j - k)
            depth[i:j] = [d] * (j - i)
            i = j
            continue
        if c in _OPEN:
            d += 1
        elif c in _CLOSE:
            d = max(0, d - 1)
        depth[i] = d
        i += 1
    return string, comment, depth


def _scan_lines(b: bytes) -> tuple[list[int], list[int]]:
    """``(indent, line_pos)`` per byte: the column of each byte in its physical line (newline and
    NUL end a line and belong to it), and the line's leading whitespace in columns (a tab advances
    to the next multiple of 8, Python's rule)."""
    n = len(b)
    indent, pos = [0] * n, [0] * n
    start = 0
    while start < n:
        end = start
        while end < n and b[end] not in (10, 0):
            end += 1
        col, k = 0, start
        while k < end and b[k] in (32, 9, 12):
            col = (col // 8 + 1) * 8 if b[k] == 9 else (0 if b[k] == 12 else col + 1)
            k += 1
        stop = min(end + 1, n)
        indent[start:stop] = [col] * (stop - start)
        pos[start:stop] = list(range(stop - start))
        start = stop
    return indent, pos


def python_features(text: str | bytes) -> dict[str, Tensor]:
    """Byte-level features of Python source, each a float tensor ``[n_bytes]``:

    - ``in_string``: byte t belongs to a string literal, from its prefix (``r``, ``b``, ``f``,
      ``u``, ``br``, ``rf``, ... any case) and opening quote(s) through its closing quote(s): the
      span of a ``tokenize`` STRING token. Single and double quotes, triple quotes, backslash
      escapes (which never close a literal, raw or not). Approximations: f-string replacement
      fields count as inside the string (Python 3.11's tokenizer agrees; 3.12 splits f-strings);
      an unterminated single-quoted literal ends at the newline.
    - ``in_comment``: from ``#`` (outside strings) up to, not including, the newline.
    - ``bracket_depth``: open ``( [ {`` after reading byte t, counting brackets in code only (an
      opening bracket has the inner depth, a closing one the outer); unmatched closers are ignored
      (the depth never goes below 0, e.g. for an excerpt starting inside brackets).
    - ``indent``: leading whitespace of byte t's physical line, in columns (also for lines inside
      multi-line strings and for continuation lines).
    - ``line_pos``: column of byte t in its line, in bytes (0 = first byte; the newline gets the
      line's length).

    NUL bytes (file separators of the stdlib corpus) reset the scanner. The scanner starts in code:
    an excerpt cut inside a string or comment is mislabelled until that literal ends.
    """
    b = _as_bytes(text)
    string, comment, depth = _scan_code(b)
    indent, pos = _scan_lines(b)
    vals = {"in_string": string, "in_comment": comment, "bracket_depth": depth, "indent": indent, "line_pos": pos}
    return {k: torch.tensor(vals[k], dtype=torch.float32) for k in PYTHON_FEATURES}


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
