"""Head ablation and the causal check of a head set (docs/methods.md §2), on every architecture.

:func:`ablate_heads` is a context manager that silences a set of heads ``(layer, head)`` with
TransformerLens hooks; :func:`causal_check` compares a task metric with those heads ablated against
the same number of random heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality": mask the top-K heads vs K random heads) and returns a
:class:`CausalCheck`.

What a "head" is and what each mode does is the mixer's answer (the mixer protocol,
``seqlens.models.mixer``): ``mixer.groups`` says which heads / channel groups form group g and
which hook carries the per-group output (``hook_z`` on every mixer), ``mixer.ablation_hooks(site,
mode)`` returns the edit itself. In short (details in each mixer's docstring):

- softmax attention / FoX: zero / mean at ``hook_z``; "uniform" sets the head's finite logits at
  ``hook_attn_scores`` to 0, so its causal softmax is uniform (Wu et al.'s masking);
- GLA / RetNet, Mamba, minGRU / minLSTM: zero / mean at the group's slice of ``hook_z``; "uniform"
  replaces the implicit attention α (docs/methods.md §7) by uniform causal weights over the values
  (``hook_v``, ``hook_conv`` plus Mamba's D skip, ``hook_candidate``);
- LSTM: h feeds the recurrence, so the group's read-out term is replaced at ``hook_out``.

``reference=None`` in ``"mean"`` mode: the mean is taken over the batch and positions of each
input the model is run on inside the context (the current input), not over a fixed dataset.

Recurrent inference (``step`` / ``stream`` / ``forward_chunk``, i.e. a state is given): "zero" and
"mean" with a ``reference`` act per position and work as in ``forward``; attention's "uniform" works
too (the KV cache carries every key). The cumulative-mean modes (uniform on GLA / RetNet, Mamba,
minGRU / minLSTM, LSTM) would need the running sum of values since position 0, which the model
state does not carry: they raise NotImplementedError; so does "mean" without a ``reference`` (a
chunk's own mean is not the input's). Both are raised when the mixer is called with a state.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from seqlens.models.mixer import MODES, AblationSite, causal_mean  # noqa: F401 - re-exported
from seqlens.result import Result

HookList = list[tuple[str, Callable]]


# ----------------------------------------------------------------------------- heads


def n_heads(model) -> int:
    """Heads per layer (``model.n_groups``: attention / GLA heads, or channel groups)."""
    return model.n_groups


def all_heads(model) -> list[tuple[int, int]]:
    """Every ``(layer, head)`` of ``model``, layer-major."""
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(n_heads(model))]


def _pair(pair: Any) -> tuple[int, int]:
    """``(layer, head)`` as Python ints (ints, numpy or 0-d tensor integers); ValueError otherwise."""
    try:
        layer, head = pair
        return operator.index(layer), operator.index(head)
    except (TypeError, ValueError):
        raise ValueError(f"heads: expected (layer, head) pairs of integers, got {pair!r}") from None


def check_heads(model, heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """Validate ``heads`` (pairs ``(layer, head)`` of ints in range) and group them by layer:
    ``{layer: sorted unique heads}``. Raises ValueError naming ``heads``."""
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise ValueError(f"heads: expected an iterable of (layer, head) pairs, got {heads!r}")
    heads = list(heads)
    if len(heads) == 2 and all(isinstance(v, int) for v in heads):
        raise ValueError(f"heads: expected an iterable of (layer, head) pairs, got the single pair "
                         f"{tuple(heads)}; pass [{tuple(heads)}]")
    L, H = model.cfg.n_layers, n_heads(model)
    by_layer: dict[int, set[int]] = {}
    for pair in heads:
        layer, head = _pair(pair)
        if not (0 <= layer < L and 0 <= head < H):
            unit = model.blocks[0].mixer.groups.unit
            raise ValueError(f"heads: {(layer, head)} out of range; expected layer in [0, {L}) and head in "
                             f"[0, {H}) ({unit} groups of arch {model.cfg.arch!r})")
        by_layer.setdefault(layer, set()).add(head)
    return {l: sorted(hs) for l, hs in sorted(by_layer.items())}


def _site(model, layer: int, heads: list[int]) -> AblationSite:
    groups = model.blocks[layer].mixer.groups
    return AblationSite(layer, groups.units(heads), per_head=groups.per_head)


# ----------------------------------------------------------------------------- context manager


@torch.no_grad()
def _record_means(model, layers: Iterable[int], reference: Tensor) -> dict[int, Tensor]:
    """Mean over batch and positions of each layer's per-group output (``mixer.groups.hook``) on ``reference``
    (``[H, d]`` for hook_z, ``[D]`` for channels), float32; one forward pass without this
    ablation (hooks installed by the caller, e.g. an enclosing ablation, do apply)."""
    reference = model.check_tokens(reference, "reference").to(model.device)
    means: dict[int, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        means[hook.layer()] = x.float().mean((0, 1))

    model.run_with_hooks(reference, fwd_hooks=[(f"blocks.{l}.mixer.{model.blocks[l].mixer.groups.hook}", grab)
                                               for l in layers])
    return means


def _stateless_guard(why: str, exc: type[Exception], module, args, kwargs) -> None:
    """Forward pre-hook on a mixer: refuse calls that continue from a state (step / stream)."""
    state = kwargs.get("state", args[1] if len(args) > 1 else None)
    if state is not None:
        raise exc(f"ablate_heads: {why} is defined on whole sequences only and cannot run in "
                  "step() / stream() / forward_chunk() (a state was given); run model(tokens) instead")


def _needs_guard(model, mode: str, reference: Tensor | None) -> tuple[str, type[Exception]] | None:
    mixer = model.blocks[0].mixer
    if mode in mixer.whole_sequence_modes:
        return (f"mode={mode!r} on {type(mixer).__name__} mixers (a causal mean since position 0)",
                NotImplementedError)
    if mode == "mean" and reference is None:
        return "mode='mean' with reference=None (the mean over the current input)", NotImplementedError
    return None


def _install_guards(model, layers: Iterable[int], guard: tuple[str, type[Exception]] | None) -> list:
    """Register :func:`_stateless_guard` on the mixers of ``layers`` (none when ``guard`` is None);
    returns the torch handles to remove."""
    if guard is None:
        return []
    fn = partial(_stateless_guard, *guard)
    return [model.blocks[l].mixer.register_forward_pre_hook(fn, with_kwargs=True) for l in layers]


@contextlib.contextmanager
def ablate_heads(model, heads: Iterable[tuple[int, int]], mode: str = "zero",
                 reference: Tensor | None = None):
    """Inside this context, ``model`` runs with ``heads`` (``(layer, head)`` pairs; channel groups
    for Mamba / minGRU / minLSTM / LSTM) ablated by ``mode`` in ``{"zero", "mean", "uniform"}``;
    the module docstring defines each mode per architecture. ``reference`` (LongTensor ``[B, L]``,
    "mean" only) is run once on entry to record the means; with ``reference=None`` the mean is over
    the batch and positions of whatever input is run inside the context. Hooks are removed on exit,
    also when the block raises. Yields ``model``."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if reference is not None and mode != "mean":
        raise ValueError(f"reference: only used by mode='mean', got mode={mode!r}")
    by_layer = check_heads(model, heads)
    means = _record_means(model, by_layer, reference) if reference is not None else {}
    hooks: HookList = []
    for layer, hs in by_layer.items():
        site = _site(model, layer, hs)
        site.mean = means.get(layer)
        mixer = model.blocks[layer].mixer
        hooks += [(f"blocks.{layer}.mixer.{name}", fn) for name, fn in mixer.ablation_hooks(site, mode)]
    handles = _install_guards(model, by_layer, _needs_guard(model, mode, reference))
    try:
        with model.hooks(fwd_hooks=hooks):
            yield model
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- causal check


@dataclass(kw_only=True)
class CausalCheck(Result):
    """A task metric with no ablation (``baseline``), with ``heads`` ablated (``ablated``) and with
    ``len(random)`` draws of as many random other heads (``random``, heads in ``random_heads``).

    ``drop`` (and ``random_drops``) = how much worse than the baseline, signed by the metric's
    direction: ``baseline − value`` when higher is better, ``value − baseline`` otherwise
    (``−TaskMetric.improvement(baseline, value)``); positive means the ablation hurt.
    :meth:`fraction_removed` expresses a drop as a share of the baseline's distance to a null value.
    """

    baseline: float
    ablated: float
    random: list[float]
    heads: list[tuple[int, int]]
    random_heads: list[list[tuple[int, int]]]
    metric: str = "metric"
    higher_is_better: bool = True

    def __post_init__(self) -> None:  # JSON gives lists back: restore the (layer, head) tuples
        self.heads = [tuple(int(v) for v in p) for p in self.heads]
        self.random_heads = [[tuple(int(v) for v in p) for p in draw] for draw in self.random_heads]

    def _drop(self, value: float) -> float:
        return (self.baseline - value) if self.higher_is_better else (value - self.baseline)

    @property
    def drop(self) -> float:
        """How much worse the metric is with ``heads`` ablated (positive = hurt)."""
        return self._drop(self.ablated)

    @property
    def random_drops(self) -> list[float]:
        return [self._drop(v) for v in self.random]

    @property
    def random_drop_mean(self) -> float:
        return float(torch.tensor(self.random_drops).mean()) if self.random else math.nan

    @property
    def random_drop_std(self) -> float:
        """Sample standard deviation of the random draws' drops (NaN below two draws)."""
        return float(torch.tensor(self.random_drops).std()) if len(self.random) > 1 else math.nan

    def fraction_removed(self, null: float = 0.0) -> float:
        """``(baseline − ablated) / (baseline − null)``: the share of the baseline's effect that
        ablating ``heads`` removes, where ``null`` is the metric of a model without the behaviour
        (0 for effect sizes such as ``induction_loss_drop``; e.g. the unigram loss for a loss).
        Direction-free: both differences flip sign together."""
        return (self.baseline - self.ablated) / (self.baseline - null)

    def random_fraction_removed(self, null: float = 0.0) -> list[float]:
        """:meth:`fraction_removed` of every random draw."""
        return [(self.baseline - v) / (self.baseline - null) for v in self.random]

    def to_frame(self):
        """``pandas.DataFrame``, one row per condition: ``condition`` (baseline / target / random),
        ``draw`` (random draw index, else -1), ``heads`` (``"L1H3 L0H2"``), ``value``, ``drop``."""
        import pandas as pd

        fmt = lambda hs: " ".join(f"L{l}H{h}" for l, h in hs)  # noqa: E731
        rows = [("baseline", -1, "", self.baseline), ("target", -1, fmt(self.heads), self.ablated)]
        rows += [("random", i, fmt(hs), v) for i, (hs, v) in enumerate(zip(self.random_heads, self.random))]
        frame = pd.DataFrame(rows, columns=["condition", "draw", "heads", "value"])
        frame["drop"] = [self._drop(v) for v in frame["value"]]
        return frame

    def figure(self, **layout: Any):
        """Plotly bars of the metric for baseline, target heads and the random draws' mean ± std,
        with every random draw as a point; ``layout`` overrides plotly layout settings."""
        import plotly.graph_objects as go

        t = torch.tensor(self.random, dtype=torch.float64)
        mean = float(t.mean()) if len(t) else math.nan
        std = float(t.std()) if len(t) > 1 else 0.0
        k = len(self.heads)
        names = ["baseline", f"target ({k} head{'' if k == 1 else 's'})", f"random (n={len(self.random)})"]
        fig = go.Figure(go.Bar(x=names, y=[self.baseline, self.ablated, mean],
                               error_y={"type": "data", "array": [0, 0, std]},
                               marker_color=["#888888", "#d62728", "#1f77b4"], name="metric"))
        hover = [" ".join(f"L{l}H{h}" for l, h in hs) for hs in self.random_heads]
        fig.add_trace(go.Scatter(x=[names[2]] * len(self.random), y=self.random, mode="markers",
                                 text=hover, marker={"color": "black", "size": 6}, name="random draws"))
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        # the metric's own name (not "model:metric") over its direction, on two lines: one long axis title
        # ran up into the chart title
        fig.update_layout(title=f"Causal check ({self.settings.get('mode', '')} ablation)",
                          yaxis_title=f"{self.metric.rpartition(':')[2]}<br>({arrow})", showlegend=False)
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def random_head_sets(pool: list[tuple[int, int]], k: int, n: int, seed: int | torch.Generator = 0
                     ) -> list[list[tuple[int, int]]]:
    """``n`` different draws of ``k`` distinct heads, each uniformly from ``pool`` (sorted within a
    draw; a set already drawn is drawn again, so no control is counted twice). When at most ``n``
    such sets exist, every one of them, in order: with few heads the controls are enumerated."""
    if k > len(pool):
        raise ValueError(f"heads: {k} heads to match but only {len(pool)} other heads to draw from")
    if math.comb(len(pool), k) <= n:
        return [list(c) for c in itertools.combinations(sorted(pool), k)]
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    seen: set[tuple] = set()
    draws = []
    while len(draws) < n:  # ends: more than n sets exist
        draw = tuple(sorted(pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:k]))
        if draw not in seen:
            seen.add(draw)
            draws.append(list(draw))
    return draws


def causal_check(model, heads: Iterable[tuple[int, int]], task: Any = None, n_random: int = 10,
                 mode: str = "zero", seed: int = 0, progress: Any = True,
                 reference: Tensor | None = None) -> CausalCheck:
    """The task metric (``task`` as in :func:`~seqlens.circuits.task_metric.resolve_task`: None /
    "recipe" for a zoo organism's own metric, a metric name, a TaskBatch, a callable or a TaskMetric)
    with no ablation, with ``heads`` ablated (:func:`ablate_heads` with ``mode`` / ``reference``),
    and with ``n_random`` draws of as many heads drawn uniformly from all other heads
    (``torch.Generator`` seeded with ``seed``). docs/methods.md §2 (Wu et al. 2024): top-K vs K random.
    ``progress``: one step per condition (:mod:`seqlens.progress`: a bool or ``callable(done, total)``)."""
    from seqlens.circuits.task_metric import resolve_task

    targets = [(l, h) for l, hs in check_heads(model, heads).items() for h in hs]
    if not targets:
        raise ValueError("heads: expected at least one (layer, head) pair")
    if not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random: expected a non-negative integer, got {n_random!r}")
    metric = resolve_task(model, task)
    pool = [hd for hd in all_heads(model) if hd not in set(targets)]
    draws = random_head_sets(pool, len(targets), n_random, seed)
    values = _evaluate(model, metric, [None, targets, *draws], mode, reference, progress)
    settings = {"model": model.name, "arch": model.cfg.arch, "mode": mode,
                "n_random": n_random, "seed": seed, "task": metric.name,
                "distinct_sets": math.comb(len(pool), len(targets)),
                "reference": None if reference is None else list(reference.shape)}
    return CausalCheck(baseline=values[0], ablated=values[1], random=values[2:], heads=targets,
                       random_heads=draws, metric=metric.name, higher_is_better=metric.higher_is_better,
                       settings=settings)


def _evaluate(model, metric, conditions: list, mode: str, reference: Tensor | None,
              progress: Any) -> list[float]:
    """``metric(model)`` under each condition (None = no ablation, else a head list)."""
    from seqlens.progress import progress_bar

    values = []
    for heads in progress_bar(progress, conditions, desc="causal check"):
        if heads is None:
            values.append(metric(model))
            continue
        with ablate_heads(model, heads, mode, reference):
            values.append(metric(model))
    return values
