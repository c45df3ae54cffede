"""State capacity: passkey retrieval over lengths × depths and its scaling with state size
(docs/methods.md §5; Stuffed Mamba, Chen et al. 2024, ``thunlp/stuffed-mamba``).

**Passkey sweep** (:func:`passkey_sweep`). Prompts come from
:func:`seqlens.circuits.retrieval.needle_prompts` — for the passkey organisms exactly their trained
byte-level format (``style="compact"``: ``" key K."`` in filler, then ``" key K"``, 5 digits) —
and are decoded greedily by :func:`seqlens.circuits.retrieval.greedy_decode` (``len(answer)``
tokens). A length is prompt + answer tokens; a depth is the fraction of filler before the needle.
Every trial is judged four ways; the grids hold the cell means over the ``n_trials`` trials:

- ``exact``: all key digits right, in order (Stuffed Mamba's retrieval criterion; the default
  ``measure``);
- ``digits``: fraction of key positions decoded right (closest to the organisms' recorded
  ``accuracy`` metric, which is teacher-forced per-digit accuracy);
- ``recall``: ROUGE-1 recall of the key tokens (Wu et al.'s needle score / 100);
- ``correct``: ``recall > 0.5`` (the retrieval-head criterion).

``longest_perfect`` (Stuffed Mamba's T_max, "the maximum context length with perfect passkey
retrieval"): the longest tested length L such that *every* tested length ≤ L has accuracy (the
chosen ``measure``) ≥ ``threshold`` (default 0.95) at *every* depth; None when the shortest length
already fails. With n trials per cell, 0.95 means no miss for n < 20. The prefix rule keeps T_max
monotone when a noisy longer length happens to pass after a shorter one failed.
:meth:`PasskeySweep.length_at` is the threshold variant: the length where the depth-averaged
accuracy first drops below ``level``, interpolated linearly in log-length between the two tested
lengths around the crossing (a proxy for where the model starts forgetting, T_forget).

**Capacity fit** (:func:`capacity_fit`). Across models differing in state size N_S (the
passkey-mamba-n* organisms), fit ``T = a·N_S + b`` (linear; Stuffed Mamba's T_forget law) and
``log T = c·N_S + d`` (exponential; its T_max law) by least squares, T being ``longest_perfect``
or ``length_at(level)``. N_S is ``d_state`` (Mamba's N, the per-channel state size, what the
organisms vary) by default; ``state_size="elements"`` uses the number of state entries
(``n_layers · d_inner · d_state`` for Mamba) instead. For models that differ only in ``d_state``
the two are proportional, so the fits are identical up to the units of a and c. R² of the linear
fit is on T, of the exponential fit on log T. Two models give an exactly determined fit (two
points, two parameters): R² is then reported as NaN, not as a meaningless 1, and
``exactly_determined`` is True.

Lag decoding lives in :mod:`seqlens.probes.lag` (re-exported here).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlens.circuits.retrieval import (
    CORRECT_RECALL,
    DEFAULT_DEPTHS,
    NeedlePrompt,
    answer_recall,
    greedy_decode,
    needle_prompts,
)
from seqlens.result import Result
from seqlens.probes.checks import check_fraction as _check_fraction
from seqlens.probes.checks import check_int as _check_int
from seqlens.probes.lag import (SOURCES, LagCurve, default_symbols, lag_curves_figure,  # noqa: F401 - re-exported
                                lag_decoding)

DEFAULT_LENGTHS = (64, 128, 256, 512, 1024)
SWEEP_MEASURES = ("exact", "digits", "recall", "correct")
TARGETS = ("longest_perfect", "length_at")
STATE_SIZES = ("d_state", "elements")


# ----------------------------------------------------------------------------- passkey sweep


@dataclass(kw_only=True)
class PasskeySweep(Result):
    """Passkey accuracy over ``lengths`` (rows, ascending) × ``depths`` (columns).

    ``accuracy [n_lengths, n_depths]``: the chosen ``measure`` (one of ``exact``, ``digits``,
    ``recall``, ``correct``; module docstring); ``exact`` / ``digits`` / ``recall`` the three
    measures themselves; ``longest_perfect``: the longest length retrieved at accuracy ≥
    ``threshold`` at every depth, every shorter tested length passing too (None if the shortest
    fails). ``settings``: model, arch, ``state_size`` (``{"d_state", "elements"}``), prompt
    format, seed, ``seconds``.
    """

    lengths: list[int]
    depths: list[float]
    accuracy: Tensor
    exact: Tensor
    digits: Tensor
    recall: Tensor
    measure: str = "exact"
    threshold: float = 0.95
    n_trials: int = 1
    longest_perfect: int | None = None

    def __post_init__(self) -> None:
        for name in ("accuracy", "exact", "digits", "recall"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float32)
            if value.shape != (len(self.lengths), len(self.depths)):
                raise ValueError(f"{name}: expected shape [{len(self.lengths)}, {len(self.depths)}] "
                                 f"(lengths × depths), got {list(value.shape)}")
            setattr(self, name, value)

    @property
    def mean_accuracy(self) -> Tensor:
        """Accuracy averaged over depths, ``[n_lengths]``."""
        return self.accuracy.mean(1)

    def length_at(self, level: float = 0.5) -> float | None:
        """The length where the depth-averaged accuracy first drops below ``level``, interpolated
        linearly in log-length between the tested lengths around the crossing; None when it never
        drops below ``level`` (beyond the longest tested length) or is already below at the
        shortest one (before it)."""
        level = _check_fraction("level", level)
        acc, L = self.mean_accuracy.tolist(), self.lengths
        if acc[0] < level:
            return None
        for i in range(1, len(L)):
            if acc[i] < level:
                frac = (acc[i - 1] - level) / (acc[i - 1] - acc[i])
                return float(math.exp(math.log(L[i - 1]) + frac * (math.log(L[i]) - math.log(L[i - 1]))))
        return None

    def to_frame(self):
        """``pandas.DataFrame`` with ``length, depth, accuracy, exact, digits, recall`` (one row per
        cell)."""
        import pandas as pd

        return pd.DataFrame([{"length": L, "depth": d, "accuracy": float(self.accuracy[i, j]),
                              "exact": float(self.exact[i, j]), "digits": float(self.digits[i, j]),
                              "recall": float(self.recall[i, j])}
                             for i, L in enumerate(self.lengths) for j, d in enumerate(self.depths)])

    def figure(self, **layout: Any):
        """Plotly heatmap: depth (rows) × length (columns), the usual needle-in-a-haystack plot;
        ``layout`` overrides plotly layout settings."""
        import plotly.graph_objects as go

        z = self.accuracy.T.tolist()
        x = [str(L) for L in self.lengths]
        y = [f"{d:.2f}" for d in self.depths]
        fig = go.Figure(go.Heatmap(z=z, x=x, y=y, zmin=0, zmax=1, colorscale="RdYlGn",
                                   text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                                   colorbar={"title": self.measure}))
        name = self.settings.get("model", "")
        lp = self.longest_perfect
        fig.update_layout(title=f"passkey retrieval {name} ({self.measure}, {self.n_trials} trials/cell); "
                                f"longest perfect: {lp if lp is not None else 'none'}",
                          xaxis_title="context length (tokens)", yaxis_title="needle depth")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def state_size(model) -> dict[str, int | None]:
    """``{"d_state", "elements"}`` of ``model``: Mamba's ``d_state`` (None for other
    architectures) and the number of entries of the recurrent state ``hook_state`` reports, summed
    over layers (None for attention, whose state is the KV cache)."""
    cfg = model.cfg
    d_state = model.blocks[0].mixer.d_state
    d_state = None if d_state is None else int(d_state)
    mixers = model.mixers
    if not model.supports_state_taps:
        return {"d_state": d_state, "elements": None}
    st = model.init_state(1)
    elements = sum(int(m.tap_value(layer).numel()) for m, layer in zip(mixers, st.layers))
    return {"d_state": d_state, "elements": elements}


def longest_perfect(lengths: Sequence[int], accuracy: Tensor, threshold: float = 0.95) -> int | None:
    """The longest of the ascending ``lengths`` such that it and every shorter one have
    ``accuracy [n_lengths, n_depths] >= threshold`` at every depth; None if the first fails."""
    best = None
    for L, row in zip(lengths, accuracy):
        if not bool((row >= threshold).all()):
            break
        best = int(L)
    return best


def _judge(model, prompt: NeedlePrompt, out: Tensor) -> dict[str, float]:
    """The four measures of one greedy output (module docstring)."""
    k = len(prompt.answer)
    got, ans = out[:k].cpu(), prompt.answer.cpu()
    recall = answer_recall(prompt, out.tolist(), getattr(model, "tokenizer", None))
    digits = float((got == ans[:len(got)]).float().sum()) / k
    return {"exact": float(len(got) == k and bool(torch.equal(got, ans))), "digits": digits,
            "recall": recall, "correct": float(recall > CORRECT_RECALL)}


def _decode(model, prompts: list[NeedlePrompt], batch_size: int, progress: Any) -> list[Tensor]:
    """Greedy outputs (``len(answer)`` tokens) of every prompt, batched by prompt length."""
    from seqlens.progress import progress_bar

    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((len(p.tokens), len(p.answer)), []).append(i)
    batches = [(idx[i:i + batch_size], n) for (_, n), idx in groups.items() for i in range(0, len(idx), batch_size)]
    outputs: list[Tensor] = [torch.empty(0, dtype=torch.long)] * len(prompts)
    for idx, n_new in progress_bar(progress, batches, desc="passkey sweep"):
        toks = torch.stack([prompts[i].tokens for i in idx]).to(model.device)
        for i, row in zip(idx, greedy_decode(model, toks, n_new).cpu()):
            outputs[i] = row
    return outputs


@torch.no_grad()
def passkey_sweep(model, lengths: int | Sequence[int] = DEFAULT_LENGTHS,
                  depths: float | Sequence[float] = DEFAULT_DEPTHS, n_trials: int = 8, seed: int = 0,
                  measure: str = "exact", threshold: float = 0.95, batch_size: int = 16, progress: Any = True,
                  **format_kwargs: Any) -> PasskeySweep:
    """Passkey accuracy of ``model`` over ``lengths × depths`` (``n_trials`` per cell; module
    docstring). Prompts: :func:`~seqlens.circuits.retrieval.needle_prompts` (``format_kwargs``:
    ``kind``, ``style``, ``answer_len``; the model's own format by default), decoded greedily in
    batches of ``batch_size``. ``measure`` fills ``accuracy`` and decides ``longest_perfect``
    (accuracy ≥ ``threshold`` at every depth). ``progress``: one step per decoded batch
    (:mod:`seqlens.progress`: a bool or ``callable(done, total)``).
    """
    if measure not in SWEEP_MEASURES:
        raise ValueError(f"measure: expected one of {list(SWEEP_MEASURES)}, got {measure!r}")
    threshold = _check_fraction("threshold", threshold)
    batch_size = _check_int("batch_size", batch_size)
    start = time.perf_counter()
    prompts = needle_prompts(model, lengths, depths, n_trials, seed, **format_kwargs)
    judged = [_judge(model, p, out) for p, out in zip(prompts, _decode(model, prompts, batch_size, progress))]
    Ls = sorted(dict.fromkeys(p.length for p in prompts))
    Ds = list(dict.fromkeys(p.depth for p in prompts))
    grids = {m: torch.zeros(len(Ls), len(Ds)) for m in SWEEP_MEASURES}
    counts = torch.zeros(len(Ls), len(Ds))
    for p, j in zip(prompts, judged):
        i, k = Ls.index(p.length), Ds.index(p.depth)
        counts[i, k] += 1
        for m in SWEEP_MEASURES:
            grids[m][i, k] += j[m]
    grids = {m: g / counts for m, g in grids.items()}
    acc = grids[measure]
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                "state_size": state_size(model), "kind": prompts[0].kind, "format": format_kwargs or "model default",
                "answer_len": len(prompts[0].answer), "seed": seed, "decode": "greedy (circuits.retrieval)",
                "trained_length": (getattr(getattr(model, "recipe", None), "data_kwargs", None) or {}).get("seq_len"),
                "seconds": round(time.perf_counter() - start, 2)}
    return PasskeySweep(lengths=Ls, depths=Ds, accuracy=acc, exact=grids["exact"], digits=grids["digits"],
                        recall=grids["recall"], measure=measure, threshold=threshold, n_trials=int(n_trials),
                        longest_perfect=longest_perfect(Ls, acc, threshold), settings=settings)


# ----------------------------------------------------------------------------- capacity fit


@dataclass(kw_only=True)
class CapacityFit(Result):
    """Least-squares fits of a capacity length T against state size N_S (module docstring).

    ``names``, ``state_sizes``, ``lengths`` (T): the points fitted; ``a, b, r2_linear``:
    ``T = a·N_S + b`` (R² on T); ``c, d, r2_log``: ``log T = c·N_S + d`` (R² on log T; natural
    log); ``exactly_determined``: two points for two parameters (R² NaN then); ``excluded``: models
    left out because their T is censored (outside the tested lengths; see :func:`capacity_fit`).
    """

    names: list[str]
    state_sizes: list[float]
    lengths: list[float]
    target: str
    a: float
    b: float
    r2_linear: float
    c: float
    d: float
    r2_log: float
    exactly_determined: bool
    excluded: list[dict[str, Any]]

    def predict_linear(self, n: float | Sequence[float]) -> np.ndarray:
        return self.a * np.asarray(n, dtype=float) + self.b

    def predict_exp(self, n: float | Sequence[float]) -> np.ndarray:
        return np.exp(self.c * np.asarray(n, dtype=float) + self.d)

    def to_frame(self):
        """``pandas.DataFrame``: ``name, state_size, T, T_linear, T_exp`` (one row per fitted model)."""
        import pandas as pd

        return pd.DataFrame({"name": self.names, "state_size": self.state_sizes, "T": self.lengths,
                             "T_linear": self.predict_linear(self.state_sizes).tolist(),
                             "T_exp": self.predict_exp(self.state_sizes).tolist()})

    def figure(self, **layout: Any):
        """Plotly scatter of T against N_S with both fits (log-scaled T axis: the exponential fit is
        the straight line)."""
        import plotly.graph_objects as go

        lo, hi = min(self.state_sizes), max(self.state_sizes)
        grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 50)
        fig = go.Figure(go.Scatter(x=self.state_sizes, y=self.lengths, mode="markers+text", text=self.names,
                                   textposition="top center", name=self.target))
        lin = self.predict_linear(grid)
        fig.add_trace(go.Scatter(x=grid[lin > 0], y=lin[lin > 0], mode="lines",
                                 name=f"T = {self.a:.3g}·N + {self.b:.3g} (R² {self.r2_linear:.3f})"))
        fig.add_trace(go.Scatter(x=grid, y=self.predict_exp(grid), mode="lines", line={"dash": "dash"},
                                 name=f"log T = {self.c:.3g}·N + {self.d:.3g} (R² {self.r2_log:.3f})"))
        note = " — exactly determined (2 points)" if self.exactly_determined else ""
        fig.update_layout(title=f"capacity: {self.target} vs state size{note}", yaxis_type="log",
                          xaxis_title=f"state size N_S ({self.settings.get('state_size', '')})",
                          yaxis_title="T (tokens)")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(slope, intercept, R²)`` of a least-squares line; R² NaN with no residual degrees of
    freedom (two points) or constant y."""
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = float("nan") if len(x) <= 2 or ss_tot == 0 else 1.0 - float((resid ** 2).sum()) / ss_tot
    return float(slope), float(intercept), r2


def capacity_fit(sweeps: Sequence[PasskeySweep] | Mapping[float, PasskeySweep], target: str = "longest_perfect",
                 level: float = 0.5, state_size: str = "d_state") -> CapacityFit:
    """Fit ``T = a·N_S + b`` and ``log T = c·N_S + d`` across ``sweeps`` (module docstring).

    ``sweeps``: PasskeySweep results (N_S read from their ``settings["state_size"][state_size]``,
    ``state_size`` one of ``"d_state"``, ``"elements"``) or a mapping ``{N_S: sweep}``.
    ``target``: ``"longest_perfect"`` (T_max) or ``"length_at"`` (``sweep.length_at(level)``).
    Sweeps whose T is censored are left out (with a warning) and listed in ``excluded``: None
    (no pass at the shortest length, or no crossing inside the tested lengths) and a
    ``longest_perfect`` equal to the longest tested length (T_max lies beyond the sweep). At least
    two distinct state sizes must remain.
    """
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {list(TARGETS)}, got {target!r}")
    if state_size not in STATE_SIZES:
        raise ValueError(f"state_size: expected one of {list(STATE_SIZES)}, got {state_size!r}")
    level = _check_fraction("level", level)
    items = _sweep_items(sweeps, state_size)
    names, ns, ts, excluded = [], [], [], []
    for n, sweep in items:
        name = str(sweep.settings.get("model", f"N_S={n}"))
        t = sweep.longest_perfect if target == "longest_perfect" else sweep.length_at(level)
        if t is None or (target == "longest_perfect" and t == sweep.lengths[-1]):
            side = ("perfect at every one of" if t is not None else "no crossing inside"
                    if target == "length_at" else "already imperfect at the shortest of")
            span = f"{sweep.lengths[0]}..{sweep.lengths[-1]}"
            excluded.append({"name": name, "state_size": n,
                             "reason": f"{target} censored ({side} the tested lengths {span})"})
            continue
        names.append(name)
        ns.append(float(n))
        ts.append(float(t))
    if len(set(ns)) < 2:
        raise ValueError(f"sweeps: need at least two distinct state sizes with an uncensored {target}; "
                         f"got {len(set(ns))} (excluded: {excluded})")
    if excluded:
        warnings.warn(f"capacity_fit: left out {[e['name'] for e in excluded]} ({target} censored)",
                      RuntimeWarning, stacklevel=2)
    x, t = np.array(ns), np.array(ts)
    a, b, r2_lin = _line_fit(x, t)
    c, d, r2_log = _line_fit(x, np.log(t))
    exact = len(x) == 2
    settings = {"state_size": state_size, "target": target, "level": level if target == "length_at" else None,
                "log": "natural", "n_points": len(x),
                "note": "exactly determined: 2 points, 2 parameters per fit; R² undefined (NaN)" if exact else None}
    return CapacityFit(names=names, state_sizes=ns, lengths=ts, target=target, a=a, b=b, r2_linear=r2_lin,
                       c=c, d=d, r2_log=r2_log, exactly_determined=exact, excluded=excluded, settings=settings)


def _sweep_items(sweeps, state_size: str) -> list[tuple[float, PasskeySweep]]:
    """``[(N_S, sweep), ...]`` from a mapping or a list of PasskeySweep (module docstring)."""
    if isinstance(sweeps, Mapping):
        items = list(sweeps.items())
        if not all(isinstance(n, numbers.Real) and not isinstance(n, bool) and n > 0 for n, _ in items):
            raise ValueError(f"sweeps: mapping keys must be positive state sizes, got {[n for n, _ in items]}")
    elif isinstance(sweeps, Sequence) and not isinstance(sweeps, str):
        items = []
        for s in sweeps:
            n = (getattr(s, "settings", None) or {}).get("state_size", {}).get(state_size)
            if n is None:
                raise ValueError(f"sweeps: a sweep has no settings['state_size'][{state_size!r}]; pass a mapping "
                                 "{state_size: sweep} instead")
            items.append((n, s))
    else:
        raise ValueError(f"sweeps: expected a list of PasskeySweep or a mapping {{state_size: PasskeySweep}}, "
                         f"got {type(sweeps).__name__}")
    if not all(isinstance(s, PasskeySweep) for _, s in items):
        raise ValueError("sweeps: every entry must be a PasskeySweep (from passkey_sweep)")
    return items
