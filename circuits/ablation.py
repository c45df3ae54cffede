"""Head ablation and the causal check of a head set (docs/methods.md §2), on every architecture.

:func:`ablate_heads` is a context manager that silences a set of heads ``(layer, head)`` with
TransformerLens hooks; :func:`causal_check` compares a task metric with those heads ablated against
the same number of random heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality": mask the top-K heads vs K random heads) and returns a
:class:`CausalCheck`.

What a "head" is and what each mode does, per architecture (``x[g]`` = head / group g's slice):

- **Softmax attention / FoX** (``transformer``, ``fox``), ``cfg.n_heads`` heads:
  ``"zero"``: ``hook_z[:, :, h] = 0`` (the head writes nothing; ``o``'s bias stays).
  ``"mean"``: ``hook_z[:, :, h] =`` its mean over the batch and positions of ``reference``.
  ``"uniform"``: at ``hook_attn_scores`` the head's finite logits are set to 0 (masked entries stay
  −inf), so its causal softmax is uniform, ``A[i, j] = 1/(i+1)`` for j ≤ i — Wu et al.'s masking.
  For FoX the forget bias ``c_i − c_j`` is part of the scores (Lin et al. 2025, eq. 4), so uniform
  removes it as well.
- **GLA / RetNet** (``gla``, ``retnet``), ``cfg.n_heads`` heads: zero / mean at ``hook_z`` (the
  per-head output before the group norm; RMSNorm(0) = 0, so zero silences the head).
  ``"uniform"``: ``hook_z[t, h] = mean_{s≤t} v_s[h]`` (``hook_v`` of the same forward), i.e. the
  implicit attention α (docs/methods.md §7) replaced by uniform causal weights; the group norm and
  output gate still apply.
- **Mamba** (``mamba``): heads are the ``cfg.pattern_heads`` contiguous channel groups of
  ``d_inner`` (as in ``MambaMixer.pattern``). Zero / mean act on the group's channels of
  ``hook_ssm_out`` (the scan output incl. the D skip, before the SiLU gate); the scan state is not
  touched. ``"uniform"``: ``ssm_out[t, d] = mean_{s≤t} u[s, d] + D_d u[t, d]`` with ``u`` =
  ``hook_conv``: α replaced by uniform weights, the D skip (a per-token term outside α) kept.
- **minGRU / minLSTM**: channel groups of the hidden state (``cfg.pattern_heads``). Zero / mean act
  on the group's channels of ``hook_hidden`` (the read-out of h into ``out_proj``; edits there do
  not feed the scan). ``"uniform"``: ``h[t, d] = mean_{s≤t} h̃[s, d]`` (``hook_candidate``).
- **LSTM**: channel groups of h. Its ``hook_h`` also feeds the recurrence (an edit there replays
  the loop and changes every later gate), so the ablation acts on the read-out only, like minGRU:
  at ``hook_out`` the group's term ``h[g] @ W_out[:, g]ᵀ`` is replaced by ``h'[g] @ W_out[:, g]ᵀ``,
  with ``h' = 0`` (zero), the mean of h over ``reference`` (mean), or ``o_t ⊙ tanh(mean_{s≤t}
  g_s)`` (uniform: the cell's conditional decomposition ``c_t = Σ_s α_{t,s} g_s`` of docs/methods.md §7
  with uniform α, read out through the realised output gate). The recurrence itself is unchanged.

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
import math
import operator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from seqlens.result import Result

MODES = ("zero", "mean", "uniform")
FAMILIES = {"transformer": "attention", "fox": "attention", "gla": "linear", "retnet": "linear",
            "mamba": "mamba", "mingru": "minrnn", "minlstm": "minrnn", "lstm": "lstm"}
# where "mean" records its reference activation, per family (LSTM: h, edited at hook_out)
MEAN_SITE = {"attention": "hook_z", "linear": "hook_z", "mamba": "hook_ssm_out",
             "minrnn": "hook_hidden", "lstm": "hook_h"}
HookList = list[tuple[str, Callable]]


# ----------------------------------------------------------------------------- heads


def family(model) -> str:
    """The ablation family of ``model.cfg.arch`` (see the module docstring)."""
    arch = model.cfg.arch
    if arch not in FAMILIES:
        raise NotImplementedError(f"ablate_heads: no head ablation for arch {arch!r}; "
                                  f"supported: {sorted(FAMILIES)}")
    return FAMILIES[arch]


def n_heads(model) -> int:
    """Heads per layer: ``cfg.n_heads`` for attention, GLA and RetNet; ``cfg.pattern_heads``
    channel groups for Mamba, minGRU / minLSTM and LSTM (as ``SeqModel.mixer_pattern``)."""
    return model.cfg.n_heads if family(model) in ("attention", "linear") else model.cfg.pattern_heads


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
            raise ValueError(f"heads: {(layer, head)} out of range; expected layer in [0, {L}) and head in "
                             f"[0, {H}) ({family(model)} heads of arch {model.cfg.arch!r})")
        by_layer.setdefault(layer, set()).add(head)
    return {l: sorted(hs) for l, hs in sorted(by_layer.items())}


# ----------------------------------------------------------------------------- one layer's site


@dataclass
class _Site:
    """The units one layer's ablation edits: heads (dim 2 of ``[B, L, H, d]``) for attention and
    GLA, channels (last dim of ``[B, L, D]``) for the channel-group families."""

    layer: int
    units: Tensor  # head ids, or channel ids of the ablated groups
    per_head: bool
    mean: Tensor | None = None  # reference mean over batch and positions ([H, d] or [D])
    seen: dict[str, Tensor] = field(default_factory=dict)  # activations captured this forward

    def take(self, x: Tensor) -> Tensor:
        return x[:, :, self.units] if self.per_head else x[..., self.units]

    def put(self, x: Tensor, value: Tensor | float) -> Tensor:
        """A copy of ``x`` with the ablated units set to ``value`` (broadcast)."""
        out, v = x.clone(), value if isinstance(value, float) else value.to(x.dtype)
        if self.per_head:
            out[:, :, self.units] = v
        else:
            out[..., self.units] = v
        return out

    def mean_value(self, x: Tensor) -> Tensor:
        """The units' mean: over ``reference`` when recorded, else over ``x``'s batch and positions."""
        mean = self.mean if self.mean is not None else x.float().mean((0, 1))
        return mean[self.units].to(x.device)

    def capture(self, key: str, x: Tensor, hook: Any = None) -> None:
        self.seen[key] = x


def _site(model, fam: str, layer: int, heads: list[int]) -> _Site:
    if fam in ("attention", "linear"):
        return _Site(layer, torch.tensor(heads, dtype=torch.long), per_head=True)
    mixer = model.blocks[layer].mixer
    width = mixer.d_inner if fam == "mamba" else mixer.hidden_dim
    g = width // n_heads(model)
    chans = torch.cat([torch.arange(h * g, (h + 1) * g) for h in heads])
    return _Site(layer, chans, per_head=False)


def causal_mean(x: Tensor) -> Tensor:
    """``y[:, t] = mean_{s≤t} x[:, s]`` along dim 1 of ``x [B, L, ...]`` (float32 sums)."""
    n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=torch.float32)
    return x.float().cumsum(1) / n.view(1, -1, *([1] * (x.dim() - 2)))


# ----------------------------------------------------------------------------- hooks per family


def _attention_hooks(model, site: _Site, mode: str) -> HookList:
    """Softmax / forgetting attention: zero and mean at hook_z, uniform at hook_attn_scores."""
    if mode == "uniform":
        def flatten(s: Tensor, hook) -> Tensor:  # Wu et al.: pre-softmax logits set to 0
            out = s.clone()
            sub = out[:, site.units]
            out[:, site.units] = torch.where(torch.isfinite(sub), torch.zeros_like(sub), sub)
            return out
        return [("hook_attn_scores", flatten)]
    return [("hook_z", _constant_edit(site, mode))]


def _constant_edit(site: _Site, mode: str) -> Callable:
    """Hook that sets the site's units to 0 ("zero") or to their mean ("mean")."""
    def edit(x: Tensor, hook) -> Tensor:
        return site.put(x, 0.0 if mode == "zero" else site.mean_value(x))
    return edit


def _linear_hooks(model, site: _Site, mode: str) -> HookList:
    """GLA / RetNet: zero and mean at hook_z; uniform = causal mean of the head's values."""
    if mode != "uniform":
        return [("hook_z", _constant_edit(site, mode))]
    uniform = lambda z, hook: site.put(z, causal_mean(site.take(site.seen["v"])))  # noqa: E731
    return [("hook_v", partial(site.capture, "v")), ("hook_z", uniform)]


def _mamba_hooks(model, site: _Site, mode: str) -> HookList:
    """Mamba: the group's channels of hook_ssm_out; uniform = causal mean of u plus the D skip."""
    if mode != "uniform":
        return [("hook_ssm_out", _constant_edit(site, mode))]
    D = model.blocks[site.layer].mixer.D

    def uniform(y: Tensor, hook) -> Tensor:
        u = site.take(site.seen["u"]).float()
        return site.put(y, causal_mean(u) + D[site.units].float() * u)
    return [("hook_conv", partial(site.capture, "u")), ("hook_ssm_out", uniform)]


def _minrnn_hooks(model, site: _Site, mode: str) -> HookList:
    """minGRU / minLSTM: the group's channels of hook_hidden; uniform = causal mean of h̃."""
    if mode != "uniform":
        return [("hook_hidden", _constant_edit(site, mode))]
    uniform = lambda h, hook: site.put(h, causal_mean(site.take(site.seen["cand"])))  # noqa: E731
    return [("hook_candidate", partial(site.capture, "cand")), ("hook_hidden", uniform)]


def _lstm_hooks(model, site: _Site, mode: str) -> HookList:
    """LSTM: replace the group's read-out term at hook_out (h itself, which feeds the
    recurrence, is only observed, so the loop is not replayed)."""
    W = model.blocks[site.layer].mixer.out_proj.weight  # [d_model, D_h]
    names = ["h"] + (["g", "o"] if mode == "uniform" else [])

    def readout(out: Tensor, hook) -> Tensor:
        h = site.take(site.seen["h"]).float()
        if mode == "zero":
            new = torch.zeros_like(h)
        elif mode == "mean":
            new = site.mean_value(site.seen["h"]).float().expand_as(h)
        else:
            g, o = site.take(site.seen["g"]).float(), site.take(site.seen["o"]).float()
            new = o * torch.tanh(causal_mean(g))
        return out + ((new - h) @ W[:, site.units].float().T).to(out.dtype)
    return [(f"hook_{n}", partial(site.capture, n)) for n in names] + [("hook_out", readout)]


BUILDERS = {"attention": _attention_hooks, "linear": _linear_hooks, "mamba": _mamba_hooks,
            "minrnn": _minrnn_hooks, "lstm": _lstm_hooks}


# ----------------------------------------------------------------------------- context manager


@torch.no_grad()
def _record_means(model, fam: str, layers: Iterable[int], reference: Tensor) -> dict[int, Tensor]:
    """Mean over batch and positions of each layer's MEAN_SITE activation on ``reference``
    (``[H, d]`` for hook_z, ``[D]`` for channels), float32; one forward pass without this
    ablation (hooks installed by the caller, e.g. an enclosing ablation, do apply)."""
    reference = model.check_tokens(reference, "reference").to(model.device)
    means: dict[int, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        means[hook.layer()] = x.float().mean((0, 1))

    site = MEAN_SITE[fam]
    model.run_with_hooks(reference, fwd_hooks=[(f"blocks.{l}.mixer.{site}", grab) for l in layers])
    return means


def _stateless_guard(why: str, exc: type[Exception], module, args, kwargs) -> None:
    """Forward pre-hook on a mixer: refuse calls that continue from a state (step / stream)."""
    state = kwargs.get("state", args[1] if len(args) > 1 else None)
    if state is not None:
        raise exc(f"ablate_heads: {why} is defined on whole sequences only and cannot run in "
                  "step() / stream() / forward_chunk() (a state was given); run model(tokens) instead")


def _needs_guard(fam: str, mode: str, reference: Tensor | None) -> tuple[str, type[Exception]] | None:
    if mode == "uniform" and fam != "attention":
        return f"mode='uniform' on {fam} mixers (a causal mean since position 0)", NotImplementedError
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
    fam = family(model)
    by_layer = check_heads(model, heads)
    means = _record_means(model, fam, by_layer, reference) if reference is not None else {}
    hooks: HookList = []
    for layer, hs in by_layer.items():
        site = _site(model, fam, layer, hs)
        site.mean = means.get(layer)
        hooks += [(f"blocks.{layer}.mixer.{name}", fn) for name, fn in BUILDERS[fam](model, site, mode)]
    handles = _install_guards(model, by_layer, _needs_guard(fam, mode, reference))
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
        names = ["baseline", f"target ({len(self.heads)} heads)", f"random (n={len(self.random)})"]
        fig = go.Figure(go.Bar(x=names, y=[self.baseline, self.ablated, mean],
                               error_y={"type": "data", "array": [0, 0, std]},
                               marker_color=["#888888", "#d62728", "#1f77b4"], name="metric"))
        hover = [" ".join(f"L{l}H{h}" for l, h in hs) for hs in self.random_heads]
        fig.add_trace(go.Scatter(x=[names[2]] * len(self.random), y=self.random, mode="markers",
                                 text=hover, marker={"color": "black", "size": 6}, name="random draws"))
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        fig.update_layout(title=f"Causal check ({self.settings.get('mode', '')} ablation)",
                          yaxis_title=f"{self.metric} ({arrow})", showlegend=False)
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def random_head_sets(pool: list[tuple[int, int]], k: int, n: int, seed: int | torch.Generator = 0
                     ) -> list[list[tuple[int, int]]]:
    """``n`` draws of ``k`` distinct heads, each uniformly from ``pool`` (sorted within a draw)."""
    if k > len(pool):
        raise ValueError(f"heads: {k} heads to match but only {len(pool)} other heads to draw from")
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    return [sorted(pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:k]) for _ in range(n)]


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
    settings = {"model": getattr(model, "name", None), "arch": model.cfg.arch, "mode": mode,
                "n_random": n_random, "seed": seed, "task": metric.name,
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
