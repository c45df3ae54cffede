"""Outlier channels of linear-layer inputs (Mamba-PTQ; docs/methods.md §10).

For every ``nn.Linear`` of a model (named by its module path) and every input channel ``c``,

    m_c = max over tokens |X[:, c]|                       (X: every input the layer received)

and channel c is an *outlier* of that layer iff ``m_c > μ + n_sigma · σ``, with μ and σ the mean
and population standard deviation (``correction=0``) of ``m`` over the layer's ``d_in`` channels.
A single outlier among n channels has a z-score of at most √(n − 1), so layers narrower than
``n_sigma² + 1`` inputs (37 for 6σ) can never have one: the rule is meant for realistic widths.

Consistency across layers: the layers whose input is the output of a norm module (``ln1``,
``ln2``, ``ln_final``) read the residual stream, one shared basis of ``d_model`` channels, so
their outlier sets can be compared. The result holds the Jaccard matrix of those sets (NaN when
both are empty), a summary (mean Jaccard over pairs that read different norms: layers reading the
same tensor, e.g. q / k / v, agree trivially) and, per residual channel, the number of distinct
norm outputs in which it is an outlier. Layers reading anything else (MLP neurons, a mixer's
inner channels, ``hidden_proj``'s recurrent ``h``) are per-layer bases and are only reported.

Loss change: the outlier input channels are zeroed with forward pre-hooks on the ``nn.Linear``
modules (:func:`zero_input_channels`), one layer at a time and all layers together, and the loss
(cross-entropy over the batch's loss mask) and next-token accuracy are compared with the
unablated model. A layer without outliers is not re-run: zeroing nothing changes nothing (the
hooks then leave the input untouched, bit for bit).

Default data (:func:`default_batch`): the zoo recipe's first evaluation batch (``model.recipe``,
all its rows); otherwise, for byte-level models (a :class:`~seqlens.corpus.ByteTokenizer`, or no
tokenizer and a 256-token vocabulary), ``batch`` evenly spaced windows of ``seq_len`` bytes of
the standard-library validation split; otherwise ``batch`` × ``seq_len`` uniform random tokens
drawn with ``seed`` (``seq_len`` default min(128, n_ctx)). Given ``tokens`` are
scored as a language model: position t predicts token t + 1 (the last position is not scored).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from seqlens.result import Result
from seqlens.text import is_byte_level
from seqlens.validate import positive_int

DEFAULT_BATCH = 16
DEFAULT_SEQ_LEN = 128


# ----------------------------------------------------------------------------- data


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    return positive_int(name, value, minimum)


is_byte_model = is_byte_level  # the library's one byte-level test (seqlens.text), under this module's name


def lm_batch(tokens: Tensor):
    """A :class:`~seqlens.tasks.TaskBatch` scoring ``tokens [B, L]`` as a language model:
    targets ``tokens[:, t + 1]``, the last position masked out."""
    from seqlens.tasks import Batch

    targets = torch.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, -1] = False
    return Batch(tokens, targets, mask)


def check_tokens(model, tokens: Any, name: str = "tokens", min_len: int = 1) -> Tensor:
    """``tokens`` as a LongTensor ``[B, L]`` with ids in the vocabulary, or a ValueError."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name}: expected an integer tensor of token ids [batch, seq_len], got {shape}")
    if tokens.shape[0] < 1 or tokens.shape[1] < min_len:
        raise ValueError(f"{name}: expected at least 1 sequence of length >= {min_len}, got {list(tokens.shape)}")
    V = model.cfg.vocab_size
    if int(tokens.min()) < 0 or int(tokens.max()) >= V:
        raise ValueError(f"{name}: token ids must lie in [0, {V}), got [{int(tokens.min())}, {int(tokens.max())}]")
    return tokens.long()


def default_batch(model, tokens: Tensor | None = None, batch: int = DEFAULT_BATCH,
                  seq_len: int | None = None, seed: int = 0):
    """``(Batch, info)``: ``tokens`` scored as a language model, or the default data of the module
    docstring (recipe eval batch / stdlib validation windows / random tokens); ``info`` records the
    source for a Result's settings."""
    if tokens is not None:
        tokens = check_tokens(model, tokens, min_len=2)
        return lm_batch(tokens), {"data": "tokens", "batch": tokens.shape[0], "seq_len": tokens.shape[1]}
    batch = _positive_int("batch", batch)
    recipe = getattr(model, "recipe", None)
    if recipe is not None:
        from seqlens.tasks import get_batch

        b = get_batch(recipe, 0, split="eval")
        return b, {"data": f"recipe:{recipe.name}:eval[0]", "batch": b.tokens.shape[0], "seq_len": b.tokens.shape[1]}
    seq_len = min(DEFAULT_SEQ_LEN, model.cfg.n_ctx) if seq_len is None else _positive_int("seq_len", seq_len, 2)
    if is_byte_model(model):
        from seqlens.corpus import StdlibCorpus

        w = StdlibCorpus().eval_windows(seq_len, "val", max_windows=batch)
        from seqlens.tasks import Batch

        b = Batch(w[:, :-1], w[:, 1:], torch.ones(w.shape[0], seq_len, dtype=torch.bool))
        return b, {"data": "stdlib:val (evenly spaced windows)", "batch": w.shape[0], "seq_len": seq_len}
    g = torch.Generator().manual_seed(int(seed))
    toks = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=g)
    return lm_batch(toks), {"data": "uniform_random_tokens", "batch": batch, "seq_len": seq_len, "seed": seed}


# ----------------------------------------------------------------------------- hooks


def linear_layers(model) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` by module path (a module shared under two names counts once)."""
    seen, out = set(), {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and id(mod) not in seen:
            seen.add(id(mod))
            out[name] = mod
    return out


@contextlib.contextmanager
def zero_input_channels(model, channels: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """Inside this context the input channels ``channels[name]`` of each ``nn.Linear`` named
    ``name`` are zeroed (forward pre-hooks). An empty list leaves that layer's input untouched."""
    layers = linear_layers(model)
    unknown = sorted(set(channels) - set(layers))
    if unknown:
        raise ValueError(f"channels: unknown linear layers {unknown[:5]}; known e.g. {list(layers)[:5]}")
    handles = []
    try:
        for name, chans in channels.items():
            idx = [int(c) for c in chans]
            d = layers[name].in_features
            if any(not 0 <= c < d for c in idx):
                raise ValueError(f"channels: {name} has {d} input channels, got {idx}")
            if not idx:
                continue
            mask = torch.zeros(d, dtype=torch.bool, device=layers[name].weight.device)
            mask[idx] = True
            handles.append(layers[name].register_forward_pre_hook(
                lambda mod, args, m=mask: (args[0].masked_fill(m, 0.0), *args[1:])))
        yield
    finally:
        for h in handles:
            h.remove()


def _norm_modules(model) -> dict[str, nn.Module]:
    return model.norm_modules()


@torch.no_grad()
def input_max_abs(model, tokens: Tensor) -> tuple[dict[str, Tensor], dict[str, str | None]]:
    """``(m, reads)``: ``m[name] [d_in]`` = max over every input row the linear layer received
    of ``|x_c|`` (float32, CPU; a layer called per step, like the LSTM's ``hidden_proj``, pools all
    its calls), and ``reads[name]``: the norm module whose output it reads (None otherwise)."""
    layers, norms = linear_layers(model), _norm_modules(model)
    m: dict[str, Tensor] = {}
    reads: dict[str, str | None] = {}
    outputs: list[tuple[str, Tensor]] = []  # kept alive so storage is never reused within the pass

    def on_norm(name):
        return lambda mod, args, out: outputs.append((name, out))

    def on_linear(name):
        def hook(mod, args):
            x = args[0].detach()
            cur = x.reshape(-1, x.shape[-1]).abs().amax(0).float().cpu()
            m[name] = cur if name not in m else torch.maximum(m[name], cur)
            if name not in reads:
                reads[name] = next((n for n, o in outputs if o is x or (o.data_ptr() == x.data_ptr()
                                    and o.shape == x.shape and o.stride() == x.stride())), None)
        return hook

    handles = [mod.register_forward_hook(on_norm(n)) for n, mod in norms.items()]
    handles += [mod.register_forward_pre_hook(on_linear(n)) for n, mod in layers.items()]
    try:
        model(tokens)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in m]
    for n in missing:  # never called (e.g. an unused head): no data
        m[n] = torch.full((layers[n].in_features,), float("nan"))
        reads[n] = None
    return {n: m[n] for n in layers}, {n: reads[n] for n in layers}


def find_outliers(m: Tensor, n_sigma: float) -> tuple[list[int], float, float]:
    """``(channels, μ, σ)``: channels with ``m_c > μ + n_sigma σ`` (population σ over channels)."""
    mu, sigma = float(m.float().mean()), float(m.float().std(correction=0))
    if math.isnan(mu):
        return [], mu, sigma
    return (m > mu + n_sigma * sigma).nonzero().flatten().tolist(), mu, sigma


@torch.no_grad()
def _loss_acc(model, batch) -> tuple[float, float]:
    from seqlens.tasks import masked_loss

    toks = batch.tokens.to(model.device)
    logits = model(toks).float().cpu()
    mask = batch.loss_mask
    acc = ((logits.argmax(-1) == batch.targets) & mask).sum().item() / max(1, int(mask.sum()))
    return masked_loss(logits, batch).item(), acc


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else float("nan")


# ----------------------------------------------------------------------------- result


@dataclass(kw_only=True)
class OutlierResult(Result):
    """Outlier input channels of every linear layer.

    Per layer (lists aligned with ``layers``, the module paths): ``d_in``, ``max_abs`` (``m [d_in]``),
    ``outliers`` (channel ids), ``mu``, ``sigma``, ``reads`` (the norm module feeding it, or None),
    ``loss_zeroed`` / ``acc_zeroed`` (the batch's loss / accuracy with that layer's outlier inputs
    zeroed; equal to the base when it has none). Whole model: ``loss_base``, ``acc_base``,
    ``loss_all`` / ``acc_all`` (every layer's outliers zeroed at once). Residual stream:
    ``resid_layers`` (the layers reading a norm output), ``jaccard [R, R]``, ``resid_counts
    [d_model]`` (in how many distinct norm outputs each channel is an outlier), ``consistency``."""

    layers: list[str]
    d_in: list[int]
    max_abs: list[Tensor]
    outliers: list[list[int]]
    mu: list[float]
    sigma: list[float]
    reads: list[str | None]
    loss_base: float
    acc_base: float
    loss_zeroed: list[float]
    acc_zeroed: list[float]
    loss_all: float
    acc_all: float
    resid_layers: list[str] = field(default_factory=list)
    jaccard: Tensor | None = None
    resid_counts: Tensor | None = None
    consistency: float = float("nan")
    n_sigma: float = 6.0

    def __post_init__(self) -> None:
        self.max_abs = [torch.as_tensor(m, dtype=torch.float32) for m in self.max_abs]
        self.outliers = [[int(c) for c in o] for o in self.outliers]
        n = len(self.layers)
        for name in ("d_in", "max_abs", "outliers", "mu", "sigma", "reads", "loss_zeroed", "acc_zeroed"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} entries (one per layer), got {len(getattr(self, name))}")

    @property
    def n_outliers(self) -> int:
        """Outlier (layer, channel) pairs over all layers."""
        return sum(len(o) for o in self.outliers)

    @property
    def fraction(self) -> float:
        """Share of all linear-layer input channels that are outliers."""
        return self.n_outliers / max(1, sum(self.d_in))

    def outlier_map(self) -> dict[str, list[int]]:
        """``{layer: outlier channels}`` for the layers that have any (the input of
        :func:`zero_input_channels`)."""
        return {l: o for l, o in zip(self.layers, self.outliers) if o}

    def to_frame(self):
        """One row per layer: ``layer, reads, d_in, n_outliers, channels, mu, sigma, threshold, max,
        loss_zeroed, delta_loss, acc_zeroed, delta_acc``."""
        import pandas as pd

        return pd.DataFrame({
            "layer": self.layers, "reads": self.reads, "d_in": self.d_in,
            "n_outliers": [len(o) for o in self.outliers], "channels": self.outliers,
            "mu": self.mu, "sigma": self.sigma,
            "threshold": [m + self.n_sigma * s for m, s in zip(self.mu, self.sigma)],
            "max": [float(m.max()) for m in self.max_abs],
            "loss_zeroed": self.loss_zeroed, "delta_loss": [l - self.loss_base for l in self.loss_zeroed],
            "acc_zeroed": self.acc_zeroed, "delta_acc": [a - self.acc_base for a in self.acc_zeroed],
        })

    def figure(self, layer: str | None = None, **layout: Any):
        """Without ``layer``: heatmap, layers × channels, of ``m_c / (μ + nσ)`` on a log scale
        (> 1: outlier, marked ×). With ``layer``: that layer's ``m_c`` profile, outliers in red,
        the threshold as a line."""
        import plotly.graph_objects as go

        if layer is not None:
            return self._profile(layer, **layout)
        width = max(self.d_in)
        z, xs, ys = [], [], []
        for i, (m, mu, s) in enumerate(zip(self.max_abs, self.mu, self.sigma)):
            thr = mu + self.n_sigma * s
            ratio = [math.log10(v / thr) if thr > 0 and v > 0 else None for v in m.tolist()]
            z.append(ratio + [None] * (width - len(ratio)))
            xs += self.outliers[i]
            ys += [self.layers[i]] * len(self.outliers[i])
        fig = go.Figure(go.Heatmap(z=z, x=list(range(width)), y=self.layers, colorscale="RdBu_r", zmid=0,
                                   colorbar={"title": "log10 m/(μ+nσ)"}))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="outlier",
                                 marker={"symbol": "x", "color": "black", "size": 8}))
        fig.update_layout(title=f"Outlier channels (m_c > μ + {self.n_sigma:g}σ): {self.n_outliers} in "
                          f"{sum(1 for o in self.outliers if o)} layers; loss {self.loss_base:.3f} → "
                          f"{self.loss_all:.3f} with all zeroed", xaxis_title="input channel",
                          yaxis_title="linear layer", height=max(400, 18 * len(self.layers)))
        fig.update_layout(**layout)  # the caller's settings win
        return fig

    def _profile(self, layer: str, **layout: Any):
        import plotly.graph_objects as go

        if layer not in self.layers:
            raise ValueError(f"layer: expected one of {self.layers}, got {layer!r}")
        i = self.layers.index(layer)
        m, out = self.max_abs[i].tolist(), set(self.outliers[i])
        colors = ["crimson" if c in out else "steelblue" for c in range(len(m))]
        fig = go.Figure(go.Bar(x=list(range(len(m))), y=m, marker_color=colors, name="m_c"))
        fig.add_hline(y=self.mu[i] + self.n_sigma * self.sigma[i], line_dash="dash",
                      annotation_text=f"μ + {self.n_sigma:g}σ")
        fig.update_layout(title=f"{layer}: max |x_c| over tokens ({len(out)} outliers)",
                          xaxis_title="input channel", yaxis_title="m_c")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


# ----------------------------------------------------------------------------- analysis


def _consistency(layers: list[str], outliers: list[list[int]], reads: list[str | None],
                 d_model: int) -> tuple[list[str], Tensor, Tensor, float]:
    idx = [i for i, r in enumerate(reads) if r is not None]
    sets = [set(outliers[i]) for i in idx]
    J = torch.tensor([[_jaccard(a, b) for b in sets] for a in sets], dtype=torch.float32).reshape(len(idx), len(idx))
    cross = [J[a, b] for a in range(len(idx)) for b in range(a + 1, len(idx)) if reads[idx[a]] != reads[idx[b]]]
    cross = torch.stack(cross) if cross else torch.tensor([float("nan")])
    summary = float(cross.nanmean()) if not cross.isnan().all() else float("nan")
    counts = torch.zeros(d_model, dtype=torch.int64)
    per_norm: dict[str, set[int]] = {}
    for i in idx:
        per_norm.setdefault(reads[i], set()).update(outliers[i])
    for chans in per_norm.values():
        for c in chans:
            if c < d_model:
                counts[c] += 1
    return [layers[i] for i in idx], J, counts, summary


def outlier_channels(model, tokens: Tensor | None = None, n_sigma: float = 6.0, progress: bool = True, *,
                     batch: int = DEFAULT_BATCH, seq_len: int | None = None, seed: int = 0) -> OutlierResult:
    """Outlier input channels of every ``nn.Linear`` of ``model`` (module docstring):
    ``m_c = max_tokens |X[:, c]|``, outliers at ``m_c > μ + n_sigma σ``, their consistency over the
    residual-stream readers, and the loss / accuracy change when they are zeroed (per layer and all
    together). ``tokens [B, L]`` (scored as a language model) or the default data
    (:func:`default_batch` with ``batch``, ``seq_len``, ``seed``)."""
    from tqdm.auto import tqdm

    if isinstance(n_sigma, bool) or not isinstance(n_sigma, (int, float)) or not n_sigma > 0 or math.isinf(n_sigma):
        raise ValueError(f"n_sigma: expected a positive finite number, got {n_sigma!r}")
    data, info = default_batch(model, tokens, batch, seq_len, seed)
    was_training = model.training
    model.eval()
    try:
        m, reads = input_max_abs(model, data.tokens.to(model.device))
        layers = list(m)
        found = [find_outliers(m[n], n_sigma) for n in layers]
        outliers = [f[0] for f in found]
        loss_base, acc_base = _loss_acc(model, data)
        loss_z, acc_z = [], []
        for name, out in tqdm(list(zip(layers, outliers)), desc="zeroing outliers", disable=not progress):
            if not out:
                loss_z.append(loss_base), acc_z.append(acc_base)
                continue
            with zero_input_channels(model, {name: out}):
                l, a = _loss_acc(model, data)
            loss_z.append(l), acc_z.append(a)
        with zero_input_channels(model, {n: o for n, o in zip(layers, outliers) if o}):
            loss_all, acc_all = _loss_acc(model, data)
    finally:
        model.train(was_training)
    resid, J, counts, summary = _consistency(layers, outliers, [reads[n] for n in layers], model.cfg.d_model)
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch, **info,
                "n_sigma": n_sigma, "statistic": "m_c = max over tokens |X[:, c]| of each nn.Linear input",
                "rule": f"m_c > mean + {n_sigma:g} * std (population) of m over the layer's channels",
                "ablation": "outlier input channels zeroed by forward pre-hooks",
                "loss": "cross-entropy over the batch's loss mask", "accuracy": "top-1 next token, same mask",
                "consistency": "mean Jaccard of outlier sets over pairs of residual readers of different norms"}
    return OutlierResult(layers=layers, d_in=[int(m[n].numel()) for n in layers], max_abs=[m[n] for n in layers],
                         outliers=outliers, mu=[f[1] for f in found], sigma=[f[2] for f in found],
                         reads=[reads[n] for n in layers], loss_base=loss_base, acc_base=acc_base,
                         loss_zeroed=loss_z, acc_zeroed=acc_z, loss_all=loss_all, acc_all=acc_all,
                         resid_layers=resid, jaccard=J, resid_counts=counts, consistency=summary,
                         n_sigma=float(n_sigma), settings=settings)
