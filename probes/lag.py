"""Lag decoding (docs/methods.md §5; Stuffed Mamba, Chen et al. 2024): how far back a model's state
remembers the tokens it read.

**Lag decoding** (:func:`lag_decoding`). A memory curve: for every lag k, a logistic-regression
probe (:func:`seqlens.probes.linear.fit_probe_arrays`, split by sequence) reads the token
``x_{t−k}`` from the model's state right after position t. Sources:

- ``"state"`` (recurrent models, the default for them): ``blocks.{l}.mixer.hook_state`` read
  inside ``SeqModel.tap_states`` at the sampled positions — the fixed-size recurrent state
  (Mamba: the SSM state ``[D, N]``, without the short conv buffer; LSTM: ``h`` and ``c``);
- ``"resid"`` (attention models, which have no fixed-size state: their state is the growing KV
  cache): ``blocks.{l}.hook_resid_post`` at t, i.e. what position t's residual stream holds
  about the past after layer l, not the memory the model could still reach through attention.

Default data: tokens drawn uniformly and independently from a small sub-vocabulary
(``symbols=16``: the bytes ``a``–``p`` for byte-level models, else ids ``1..16``), so every lag
is a balanced 16-way problem (chance 1/16) and past tokens carry no information about each
other: a probe above chance at lag k reads x_{t−k} from the state, not from its neighbours.
Positions t are drawn at random in ``[max(lags), seq_len)`` (the same positions for every
sequence). ``chance`` per lag is the test accuracy of predicting the training split's majority
class (close to 1/#classes for the default data). No control task: a random function of the label
token's identity is just a relabelling of the same problem.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlens.probes.checks import check_fraction as _check_fraction
from seqlens.probes.checks import check_int as _check_int
from seqlens.probes.linear import collect_activations, fit_probe_arrays, split_by_group
from seqlens.result import Result
from seqlens.tasks import make_generator

SOURCES = ("auto", "state", "resid")




@dataclass(kw_only=True)
class LagCurve(Result):
    """Lag-decoding accuracy of a probe reading ``x_{t−k}`` from the state at t.

    ``accuracy [n_layers, n_lags]`` (test) and ``train_accuracy`` for the probed ``layers`` and
    ``lags``; ``chance [n_lags]``: majority-class test accuracy per lag; ``n_classes``; ``source``:
    ``"state"`` (``hook_state``) or ``"resid"`` (``hook_resid_post``).
    """

    lags: list[int]
    layers: list[int]
    accuracy: Tensor
    train_accuracy: Tensor
    chance: list[float]
    n_classes: int
    source: str

    def __post_init__(self) -> None:
        for name in ("accuracy", "train_accuracy"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float32)
            if value.shape != (len(self.layers), len(self.lags)):
                raise ValueError(f"{name}: expected shape [{len(self.layers)}, {len(self.lags)}] "
                                 f"(layers × lags), got {list(value.shape)}")
            setattr(self, name, value)

    @property
    def best(self) -> Tensor:
        """The model's memory curve: the best layer's accuracy at each lag, ``[n_lags]``."""
        return self.accuracy.max(0).values

    def span(self, threshold: float = 0.9, layer: int | None = None) -> int | None:
        """The largest lag k such that every tested lag ≤ k decodes at accuracy ≥ ``threshold``
        (``layer``'s curve, or :attr:`best`); None if the smallest lag fails."""
        threshold = _check_fraction("threshold", threshold)
        if layer is not None and layer not in self.layers:
            raise ValueError(f"layer: expected one of the probed layers {self.layers}, got {layer!r}")
        curve = self.best if layer is None else self.accuracy[self.layers.index(layer)]
        out = None
        for k, acc in sorted(zip(self.lags, curve.tolist())):
            if acc < threshold:
                break
            out = k
        return out

    def to_frame(self):
        """``pandas.DataFrame`` with ``layer, lag, accuracy, train_accuracy, chance``."""
        import pandas as pd

        return pd.DataFrame([{"layer": l, "lag": k, "accuracy": float(self.accuracy[i, j]),
                              "train_accuracy": float(self.train_accuracy[i, j]), "chance": self.chance[j]}
                             for i, l in enumerate(self.layers) for j, k in enumerate(self.lags)])

    def figure(self, **layout: Any):
        """Plotly lines: test accuracy vs lag, one line per layer, chance dashed."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for i, l in enumerate(self.layers):
            fig.add_trace(go.Scatter(x=self.lags, y=self.accuracy[i].tolist(), mode="lines+markers",
                                     name=f"layer {l}"))
        fig.add_trace(go.Scatter(x=self.lags, y=self.chance, mode="lines", line={"dash": "dash", "color": "gray"},
                                 name="chance"))
        name = self.settings.get("model", "")
        fig.update_layout(title=f"lag decoding {name} ({self.source}): probe for x(t−k) from the state at t",
                          xaxis_title="lag k", yaxis_title="test accuracy", yaxis_range=[0, 1.02])
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def lag_curves_figure(curves: Mapping[str, LagCurve], **layout: Any):
    """Plotly lines comparing models: each curve's :attr:`LagCurve.best` against lag."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, c in curves.items():
        fig.add_trace(go.Scatter(x=c.lags, y=c.best.tolist(), mode="lines+markers", name=f"{name} ({c.source})"))
    fig.update_layout(title="memory curves: best layer's lag-decoding accuracy", xaxis_title="lag k",
                      yaxis_title="test accuracy", yaxis_range=[0, 1.02])
    fig.update_layout(**layout)  # the caller's settings win
    return fig


def default_symbols(vocab_size: int, n: int) -> list[int]:
    """``n`` token ids for random lag-decoding data: the bytes from ``a`` on for byte-level
    vocabularies (≥ 128 ids), else ``1..n`` (0 is often BOS / padding)."""
    if vocab_size >= 128 and 97 + n <= vocab_size:
        return list(range(97, 97 + n))
    if n + 1 > vocab_size:
        raise ValueError(f"symbols: {n} symbols do not fit vocab_size={vocab_size}")
    return list(range(1, n + 1))


def _lag_tokens(model, tokens, symbols, n_seqs: int, seq_len: int | None, max_lag: int,
                g: torch.Generator) -> tuple[Tensor, str]:
    """The probe data ``[B, L]`` (given, or uniform over ``symbols``) and a description of it."""
    if tokens is not None:
        tokens = model.check_tokens(tokens)
        if tokens.shape[1] <= max_lag:
            raise ValueError(f"tokens: sequences of {tokens.shape[1]} tokens are too short for lag {max_lag}")
        return tokens, "given tokens"
    if isinstance(symbols, numbers.Integral) and not isinstance(symbols, bool):
        symbols = default_symbols(model.cfg.vocab_size, _check_int("symbols", symbols, 2))
    if (not isinstance(symbols, Sequence) or len(set(symbols)) < 2
            or not all(isinstance(s, numbers.Integral) and 0 <= s < model.cfg.vocab_size for s in symbols)):
        raise ValueError(f"symbols: expected a count >= 2 or a list of >= 2 distinct token ids in "
                         f"[0, {model.cfg.vocab_size}), got {symbols!r}")
    seq_len = max(64, 2 * (max_lag + 1)) if seq_len is None else _check_int("seq_len", seq_len, max_lag + 1)
    ids = torch.randint(0, len(symbols), (_check_int("n_seqs", n_seqs, 2), seq_len), generator=g)
    return torch.tensor(list(symbols))[ids], f"uniform iid over the {len(symbols)} token ids {list(symbols)}"


def _lag_hooks(model, layers, source: str) -> tuple[list[int], str, list[str]]:
    n = model.cfg.n_layers
    if layers is None:
        layers = list(range(n))
    elif isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = [layers]
    if (not isinstance(layers, Sequence) or not layers
            or not all(isinstance(l, numbers.Integral) and not isinstance(l, bool) and 0 <= l < n for l in layers)):
        raise ValueError(f"layer: expected None, an integer or a list of integers in [0, {n}), got {layers!r}")
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {list(SOURCES)}, got {source!r}")
    has_state = model.supports_state_taps
    if source == "auto":
        source = "state" if has_state else "resid"
    if source == "state" and not has_state:
        raise ValueError(f"source: arch {model.cfg.arch!r} has no fixed-size recurrent state to tap "
                         "(attention's state is the KV cache); use source='resid'")
    fmt = "blocks.{}.mixer.hook_state" if source == "state" else "blocks.{}.hook_resid_post"
    layers = sorted(set(int(l) for l in layers))
    return layers, source, [fmt.format(l) for l in layers]


def _check_test_size(test_size: Any) -> float:
    if not isinstance(test_size, numbers.Real) or isinstance(test_size, bool) or not 0 < test_size < 1:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    return float(test_size)


def _reduce(X: np.ndarray, train: np.ndarray, max_features: int | None, seed: int) -> np.ndarray:
    """``X`` projected onto the top ``max_features`` principal components of its standardised
    training rows (unchanged when it is not wider than that, or ``max_features`` is None)."""
    if max_features is None or X.shape[1] <= max_features:
        return X
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(max_features, len(train))
    pca = make_pipeline(StandardScaler(), PCA(n, svd_solver="randomized", random_state=seed)).fit(X[train])
    return pca.transform(X).astype(np.float32)


@torch.no_grad()
def lag_decoding(model, layer: int | Sequence[int] | None = None, lags: Sequence[int] = range(0, 17),
                 tokens: Tensor | None = None, n_seqs: int = 256, seq_len: int | None = None,
                 n_positions: int = 16, symbols: int | Sequence[int] = 16, source: str = "auto", seed: int = 0,
                 C: float = 1.0, test_size: float = 0.25, max_iter: int = 300, max_features: int | None = 512,
                 batch_size: int = 64, progress: Any = True) -> LagCurve:
    """Memory curve of ``model``: logistic-regression probes read ``x_{t−k}`` from the state at t
    for every lag k in ``lags`` (module docstring).

    ``layer``: the layers probed (default all). Data: ``tokens [B, L]`` if given, else ``n_seqs``
    sequences of ``seq_len`` (default ``max(64, 2·(max lag + 1))``) tokens drawn uniformly from
    ``symbols`` (a count: :func:`default_symbols`; or a list of token ids). ``n_positions``
    positions t per sequence, drawn in ``[max(lags), seq_len)``. ``source``: ``"state"``,
    ``"resid"`` or ``"auto"`` (state when the model has one). Probes:
    :func:`~seqlens.probes.linear.fit_probe_arrays` with ``C``, ``test_size``, ``max_iter``, split
    by sequence with ``seed``; ``seed`` also draws the data and positions. ``max_features``: a
    state wider than this is first projected onto its top ``max_features`` principal components
    (standardised features; PCA fitted on the training split only, the one the probes use), which
    keeps wide states (text-mamba: 4096 entries per layer) fast; None probes the raw state.
    ``progress``: one step per fitted probe (:mod:`seqlens.progress`).
    """
    from seqlens.progress import progress_bar

    if (isinstance(lags, (str, bytes)) or not isinstance(lags, (Sequence, range)) or len(lags) == 0
            or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0 for k in lags)):
        raise ValueError(f"lags: expected a non-empty list of non-negative integers, got {lags!r}")
    lags = sorted(set(int(k) for k in lags))
    layers, source, hooks = _lag_hooks(model, layer, source)
    if max_features is not None:
        max_features = _check_int("max_features", max_features)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    g = make_generator(int(seed))
    toks, data = _lag_tokens(model, tokens, symbols, n_seqs, seq_len, lags[-1], g)
    B, L = toks.shape
    if not model.cfg.is_recurrent and model.cfg.positions == "learned" and L > model.cfg.n_ctx:
        raise ValueError(f"seq_len: {L} exceeds the model's context n_ctx={model.cfg.n_ctx} (learned positions)")
    n_pos = min(_check_int("n_positions", n_positions), L - lags[-1])
    pos = (lags[-1] + torch.randperm(L - lags[-1], generator=g)[:n_pos]).sort().values
    raw = collect_activations(model, hooks, toks, pos.tolist(), _check_int("batch_size", batch_size))
    groups = np.repeat(np.arange(B), n_pos)
    train, _ = split_by_group(len(groups), groups, _check_test_size(test_size), int(seed))
    feats = {h: _reduce(x.reshape(B * n_pos, -1).numpy(), train, max_features, int(seed)) for h, x in raw.items()}
    acc, train_acc = torch.zeros(len(layers), len(lags)), torch.zeros(len(layers), len(lags))
    chance = [0.0] * len(lags)
    bar = progress_bar(progress, total=len(layers) * len(lags), desc="lag probes")
    for j, k in enumerate(lags):
        y = toks[:, pos - k].reshape(-1).numpy()
        for i, h in enumerate(hooks):
            res = fit_probe_arrays(feats[h], y, groups, test_size, int(seed), "classification",
                                   C, True, max_iter)
            acc[i, j], train_acc[i, j], chance[j] = res.test_score, res.train_score, res.chance
            bar.update(1)
    bar.close()
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                "hooks": hooks, "data": data, "n_seqs": B, "seq_len": L, "positions": pos.tolist(), "seed": int(seed),
                "C": float(C), "test_size": float(test_size), "max_iter": int(max_iter), "max_features": max_features,
                "n_features": {h: int(x[0, 0].numel()) for h, x in raw.items()},
                "n_components": {h: int(x.shape[1]) for h, x in feats.items()},
                "probe": "LogisticRegression on standardised features, split by sequence",
                "state": "hook_state (SeqModel.tap_states)" if source == "state" else
                "hook_resid_post at t (attention has no fixed-size state)"}
    return LagCurve(lags=lags, layers=layers, accuracy=acc, train_accuracy=train_acc, chance=chance,
                    n_classes=int(len(np.unique(toks[:, pos].numpy()))), source=source, settings=settings)
