"""Linear probes on any hook, with Hewitt & Liang's control task (selectivity).

A probe is a logistic regression (class labels) or a ridge regression (continuous labels) from a
hook's activation at one position to a label (Alain & Bengio 2016, "Understanding intermediate
layers using linear classifier probes"). :func:`fit_probe` collects the activations of ``hook``
(extra dims per position are flattened: ``[B, L, H, d] -> [B·T, H·d]``) at chosen positions and
calls :func:`fit_probe_arrays`, the array-level fitter every other probe in ``seqlens.probes``
uses.

- **Split by sequence.** Train and test sets are disjoint sets of *sequences* (scikit-learn's
  ``GroupShuffleSplit`` with one group per sequence), so a probe never sees a test sequence's other
  positions while training: within one sequence positions share context, and a per-position split
  would leak it.
- **Features** are standardised on the training split (``StandardScaler``) unless
  ``standardize=False``; the classifier is ``LogisticRegression(C=C)`` (lbfgs, multinomial), the
  regressor ``Ridge(alpha=1/C)``. ``C`` is the inverse regularisation strength in both.
- **Scores**: accuracy for classification, R² for regression, on both splits. ``chance`` is the
  test score of the constant predictor fitted on the training split (majority class; training-mean
  regressor, R² ≤ 0), i.e. what a probe that ignores the activations achieves.
- **Control task** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"):
  control labels are a random but consistent function of the token identity at the probed position
  — each token type gets a label drawn once from the empirical label distribution (their §3). The
  same probe is fitted to the control labels on the same split; ``selectivity = score −
  control_score`` (test). A probe with high accuracy but low selectivity may be memorising token
  identity rather than reading a property the model represents.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlens.result import Result

TASKS = ("auto", "classification", "regression")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- result


@dataclass(kw_only=True)
class ProbeResult(Result):
    """Scores of one linear probe (module docstring).

    ``task``: ``"classification"`` (``metric == "accuracy"``) or ``"regression"`` (``"r2"``);
    ``train_score`` / ``test_score``: the probe on the real labels; ``control_train_score`` /
    ``control_test_score`` / ``selectivity``: the control task and ``test_score −
    control_test_score`` (None without a control); ``chance``: test score of the constant
    predictor; sizes ``n_train`` / ``n_test`` (samples), ``n_features``, ``n_classes`` (None for
    regression). ``estimator`` (the fitted scikit-learn pipeline, for ``predict`` or its ``coef_``)
    is kept in memory only: it is not part of ``to_json``.
    """

    task: str
    metric: str
    train_score: float
    test_score: float
    chance: float
    n_train: int
    n_test: int
    n_features: int
    n_classes: int | None = None
    control_train_score: float | None = None
    control_test_score: float | None = None
    selectivity: float | None = None
    estimator: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`Result.to_dict`, without the fitted ``estimator``."""
        data = super().to_dict()
        data.pop("estimator", None)
        return data

    def to_frame(self):
        """``pandas.DataFrame`` with ``labels`` (``probe`` / ``control``), ``split`` (``train`` /
        ``test``), ``metric``, ``score``; one row per fitted score."""
        import pandas as pd

        rows = [("probe", "train", self.train_score), ("probe", "test", self.test_score)]
        if self.control_test_score is not None:
            rows += [("control", "train", self.control_train_score), ("control", "test", self.control_test_score)]
        return pd.DataFrame([{"labels": lab, "split": sp, "metric": self.metric, "score": sc}
                             for lab, sp, sc in rows])

    def figure(self, **layout: Any):
        """Plotly bars: probe vs control score on each split, the chance level dashed; the title
        gives the selectivity. ``layout`` overrides plotly layout settings."""
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for split in ("train", "test"):
            part = df[df["split"] == split]
            fig.add_trace(go.Bar(x=part["labels"], y=part["score"], name=split,
                                 text=[f"{v:.3f}" for v in part["score"]], textposition="auto"))
        fig.add_hline(y=self.chance, line_dash="dash", annotation_text=f"chance {self.chance:.3f}")
        hook = self.settings.get("hook", "")
        title = f"linear probe{f' on {hook}' if hook else ''}: test {self.metric} {self.test_score:.3f}"
        if self.selectivity is not None:
            title += f", selectivity {self.selectivity:.3f}"
        fig.update_layout(title=title, barmode="group", xaxis_title="labels", yaxis_title=self.metric)
        fig.update_layout(**layout)  # the caller's settings win
        return fig


# ----------------------------------------------------------------------------- array level


def _as_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        value = value.float().numpy() if value.is_floating_point() else value.numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: expected an array-like, got {type(value).__name__} ({err})") from None


def resolve_task(task: str, y: np.ndarray) -> str:
    """``"classification"`` or ``"regression"``; ``"auto"`` picks regression for floating labels
    and classification for everything else (ints, bools, strings)."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    return "regression" if np.issubdtype(y.dtype, np.floating) else "classification"


def _check_probe_args(test_size: float, C: float, max_iter: int) -> None:
    if not isinstance(test_size, numbers.Real) or isinstance(test_size, bool) or not 0 < test_size < 1:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    if not isinstance(C, numbers.Real) or isinstance(C, bool) or not C > 0:
        raise ValueError(f"C: expected a positive number (inverse regularisation strength), got {C!r}")
    if not isinstance(max_iter, numbers.Integral) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")


def split_by_group(n: int, groups: np.ndarray | None, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / test sample indices: whole groups (sequences) go to one side
    (``GroupShuffleSplit``); without groups every sample is its own group."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.arange(n) if groups is None else groups
    if len(np.unique(groups)) < 2:
        raise ValueError("groups: need at least two groups (sequences) to split into train and test")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(np.zeros(n), groups=groups))
    if len(train) == 0 or len(test) == 0:  # pragma: no cover - sklearn guarantees both non-empty
        raise ValueError(f"test_size: {test_size} leaves an empty split for {len(np.unique(groups))} groups")
    return train, test


def _estimator(task: str, C: float, standardize: bool, max_iter: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = LogisticRegression(C=C, max_iter=max_iter) if task == "classification" else Ridge(alpha=1.0 / C)
    return make_pipeline(StandardScaler(), head) if standardize else make_pipeline(head)


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, r2_score

    if task == "classification":
        return float(accuracy_score(y_true, y_pred))
    return float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")


def _fit_one(task: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, C: float,
             standardize: bool, max_iter: int) -> tuple[Any, float, float, bool]:
    """Fit on ``train``; ``(estimator, train score, test score, converged)``. A training split
    with a single class gets a constant predictor (logistic regression needs two classes)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.exceptions import ConvergenceWarning

    if task == "classification" and len(np.unique(y[train])) < 2:
        est = DummyClassifier(strategy="most_frequent").fit(X[train], y[train])
        converged = True
    else:
        est = _estimator(task, C, standardize, max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est.fit(X[train], y[train])
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return (est, _score(task, y[train], est.predict(X[train])), _score(task, y[test], est.predict(X[test])),
            converged)


def _chance(task: str, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Test score of the constant predictor fitted on the training split."""
    if task == "classification":
        values, counts = np.unique(y[train], return_counts=True)
        return float(np.mean(y[test] == values[np.argmax(counts)]))
    return _score(task, y[test], np.full(len(test), float(np.mean(y[train]))))


def fit_probe_arrays(X: Any, y: Any, groups: Any = None, test_size: float = 0.25, seed: int = 0,
                     task: str = "auto", C: float = 1.0, standardize: bool = True, max_iter: int = 1000,
                     control_labels: Any = None, settings: dict[str, Any] | None = None) -> ProbeResult:
    """Fit a linear probe ``X [n, ...] -> y [n]`` (module docstring); dims after the first are flattened.

    ``groups [n]``: the sequence each sample comes from; whole groups go to train or test
    (default: every sample its own group). ``task``: ``"auto"`` (float labels -> ridge regression,
    else logistic regression), ``"classification"`` or ``"regression"``. ``control_labels [n]``:
    labels of a control task fitted on the same split (selectivity = test score − control test
    score). ``seed`` fixes the split; the fits themselves are deterministic. ``settings`` are merged
    into the result's settings.
    """
    X = _as_numpy("X", X)
    y = _as_numpy("y", y)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError("X: expected activations [n_samples, n_features, ...] with n_samples > 0, "
                         f"got shape {list(X.shape)}")
    X = X.reshape(X.shape[0], -1).astype(np.float64 if X.dtype == np.float64 else np.float32)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y: expected labels of shape [{len(X)}] (one per row of X), got {list(y.shape)}")
    if not np.isfinite(X).all():
        raise ValueError("X: activations contain NaN or inf")
    if groups is not None:
        groups = _as_numpy("groups", groups)
        if groups.shape != y.shape:
            raise ValueError(f"groups: expected shape [{len(y)}], got {list(groups.shape)}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    _check_probe_args(test_size, C, max_iter)
    task = resolve_task(task, y)
    if task == "regression":
        if not np.issubdtype(y.dtype, np.number) or not np.isfinite(y.astype(np.float64)).all():
            raise ValueError("y: regression labels must be finite numbers")
        y = y.astype(np.float64)
    train, test = split_by_group(len(y), groups, test_size, int(seed))
    est, tr, te, converged = _fit_one(task, X, y, train, test, C, standardize, max_iter)
    out: dict[str, Any] = {}
    if control_labels is not None:
        ctrl = _as_numpy("control_labels", control_labels)
        if ctrl.shape != y.shape:
            raise ValueError(f"control_labels: expected shape [{len(y)}], got {list(ctrl.shape)}")
        ctrl = ctrl.astype(np.float64) if task == "regression" else ctrl
        _, ctr, cte, _ = _fit_one(task, X, ctrl, train, test, C, standardize, max_iter)
        out = {"control_train_score": ctr, "control_test_score": cte, "selectivity": te - cte}
    n_classes = int(len(np.unique(y))) if task == "classification" else None
    info = {"task": task, "C": float(C), "standardize": standardize, "max_iter": int(max_iter),
            "test_size": float(test_size), "seed": int(seed), "converged": converged,
            "split": "by group (sequence)" if groups is not None else "by sample",
            "n_groups": int(len(np.unique(groups))) if groups is not None else len(y),
            "estimator": "LogisticRegression" if task == "classification" else "Ridge(alpha=1/C)",
            **(settings or {})}
    return ProbeResult(task=task, metric="accuracy" if task == "classification" else "r2", train_score=tr,
                       test_score=te, chance=_chance(task, y, train, test), n_train=len(train), n_test=len(test),
                       n_features=int(X.shape[1]), n_classes=n_classes, estimator=est, settings=info, **out)


def control_task(identity: Any, labels: Any, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: a random but consistent function of ``identity [n]`` (token
    ids): each distinct identity gets one label drawn from the empirical distribution of
    ``labels [n]``; returns the control label of every sample ``[n]``."""
    identity, labels = _as_numpy("identity", identity), _as_numpy("labels", labels)
    if identity.shape != labels.shape or identity.ndim != 1:
        raise ValueError(f"identity: expected shape {list(labels.shape)} like labels, got {list(identity.shape)}")
    rng = np.random.default_rng(seed)
    types, inverse = np.unique(identity, return_inverse=True)
    drawn = labels[rng.integers(0, len(labels), size=len(types))]
    return drawn[inverse]


# ----------------------------------------------------------------------------- model level


def check_hook(model, hook: str) -> str:
    """``hook`` if it names a hook point of ``model``, else a ValueError listing close names."""
    names = model.hook_names()
    if not isinstance(hook, str) or hook not in names:
        tail = hook.rsplit(".", 1)[-1] if isinstance(hook, str) else ""
        close = [n for n in names if tail and n.endswith(tail)][:8] or names[:8]
        raise ValueError(f"hook: {hook!r} is not a hook of this model; e.g. {close}")
    return hook


def normalise_positions(positions: int | Sequence[int] | Tensor, length: int) -> list[int]:
    """``positions`` (ints, negatives count from the end) as sorted unique indices in ``[0, length)``."""
    if isinstance(positions, Tensor):
        positions = positions.flatten().tolist()
    if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
        positions = [positions]
    if (not isinstance(positions, Sequence) or not positions
            or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in positions)):
        raise ValueError(f"positions: expected an integer or a non-empty list of integers, got {positions!r}")
    out = sorted({int(p) + length if p < 0 else int(p) for p in positions})
    if out[0] < 0 or out[-1] >= length:
        raise ValueError(f"positions: expected positions in [-{length}, {length}) for {length}-token "
                         f"sequences, got {list(positions)}")
    return out


@torch.no_grad()
def collect_activations(model, hooks: str | Sequence[str], tokens: Tensor, positions: Sequence[int],
                        batch_size: int = 64) -> dict[str, Tensor]:
    """Activations ``{hook: [B, T, F]}`` (float32, CPU; extra dims flattened) of ``hooks`` at
    ``positions`` (sorted, non-negative). ``...mixer.hook_state`` hooks are read inside
    ``model.tap_states(positions)`` (the recurrent state right after each position); every other
    hook must report ``[B, L, ...]`` and is indexed at ``positions``."""
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    pos = torch.tensor(positions, dtype=torch.long)
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    taps = any(h.endswith("hook_state") for h in hooks)
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size].to(model.device)
        grabbed: dict[str, Tensor] = {}

        def grab(x: Tensor, hook) -> None:
            grabbed[hook.name] = x.detach()

        with model.hooks(fwd_hooks=[(h, grab) for h in hooks]):
            if taps:
                with model.tap_states(pos):
                    model(chunk)
            else:
                model(chunk)
        for h in hooks:
            out[h].append(_select(h, grabbed, chunk.shape, pos))
    return {h: torch.cat(v) for h, v in out.items()}


def _select(hook: str, grabbed: dict[str, Tensor], shape: torch.Size, pos: Tensor) -> Tensor:
    """The grabbed activation of ``hook`` at ``pos``, as ``[B, T, F]`` float32 on the CPU."""
    if hook not in grabbed:
        raise ValueError(f"hook: {hook!r} did not fire during the forward pass")
    x = grabbed[hook]
    B, L = shape
    if not hook.endswith("hook_state"):
        if x.dim() < 2 or x.shape[0] != B or x.shape[1] != L:
            raise ValueError(f"hook: {hook!r} reports shape {list(x.shape)}, expected [batch={B}, "
                             f"seq_len={L}, ...] (one activation per position)")
        x = x[:, pos.to(x.device)]
    return x.reshape(B, len(pos), -1).float().cpu()


def fit_probe(model, hook: str, tokens: Tensor, labels: Any, positions: int | Sequence[int] | None = None,
              test_size: float = 0.25, seed: int = 0, control: bool = True, C: float = 1.0,
              task: str = "auto", standardize: bool = True, max_iter: int = 1000,
              ignore_index: int = IGNORE_INDEX, batch_size: int = 64) -> ProbeResult:
    """Fit a linear probe from ``hook``'s activations to ``labels`` (module docstring).

    ``tokens [B, L]``; ``labels``: per token ``[B, L]`` (the label of each position) or per sequence
    ``[B]`` (every probed position of a sequence gets its label). ``positions``: the positions
    probed (negatives count from the end); default every position for per-token labels, the last
    one for per-sequence labels. Integer per-token labels equal to ``ignore_index`` (-100) are
    dropped. ``...mixer.hook_state`` hooks give the recurrent state right after each position
    (``SeqModel.tap_states``). The split is by sequence; ``control=True`` adds Hewitt & Liang's
    control task (labels a random function of the token at the probed position) and the
    selectivity. ``C``: inverse regularisation strength (logistic C; ridge alpha = 1/C).
    """
    tokens = model.check_tokens(tokens)
    hook = check_hook(model, hook)
    B, L = tokens.shape
    y = _as_numpy("labels", labels)
    if y.shape not in ((B, L), (B,)):
        raise ValueError(f"labels: expected per-token labels [{B}, {L}] or per-sequence labels [{B}], "
                         f"got {list(y.shape)}")
    per_token = y.ndim == 2
    positions = normalise_positions(list(range(L)) if positions is None and per_token else
                                    [L - 1] if positions is None else positions, L)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    X = collect_activations(model, hook, tokens, positions, int(batch_size))[hook]  # [B, T, F]
    T = len(positions)
    y = y[:, positions] if per_token else np.repeat(y[:, None], T, axis=1)
    ident = tokens[:, positions].cpu().numpy()
    groups = np.repeat(np.arange(B)[:, None], T, axis=1)
    keep = np.ones((B, T), dtype=bool)
    if np.issubdtype(y.dtype, np.integer):
        keep = y != ignore_index
    if not keep.any():
        raise ValueError(f"labels: every probed label equals ignore_index={ignore_index}")
    X, y, ident, groups = X.numpy()[keep], y[keep], ident[keep], groups[keep]
    ctrl = control_task(ident, y, seed) if control else None
    settings = {"model": model.name or type(model).__name__, "arch": model.cfg.arch,
                "hook": hook, "positions": positions, "labels": "per token" if per_token else "per sequence",
                "n_sequences": B, "seq_len": L,
                "control": "Hewitt & Liang: random consistent function of the token at the probed position"
                if control else None}
    return fit_probe_arrays(X, y, groups, test_size, seed, task, C, standardize, max_iter, ctrl, settings)
