"""The Results of the state-collapse probe (see :mod:`seqlens.probes.collapse`): per-chunk and
per-bucket statistics with the collapse verdict, and before / after comparisons of mitigations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seqlens.result import Result

DEFAULT_TOKENS = 16_384
DEFAULT_CHUNK = 128
LOSS_MARGIN = 0.5  # nats per token
RMS_RATIO = 2.0
SOURCES = ("newlines", "repeat", "task")
STAT_NAMES = ("mean", "var", "rms", "median", "min", "max")
DECAY_NAMES = ("decay_mean", "decay_var", "decay_min", "decay_max")
NEWLINE_ID = 10  # "\n" in byte vocabularies
# the "capital" prompt of thunlp/stuffed-mamba (analysis/get_prompt.py), our "repeat" source
REPEAT_TEXT = ("The capital of China is Beijing. The capital of USA is Washington. "
               "The capital of Norway is Oslo. ")
REPEAT_PERIOD = 64  # random-token period of "repeat" for non-byte vocabularies
REFERENCE_ROWS = 8  # rows of the default reference prompt of normalize_states
RULE = ("collapsed iff max over buckets [L·2^k, L·2^(k+1)) past L (spanning ≥ L/2 positions) of the mean "
        "loss > mean loss over [0, L) + loss_margin  AND  some (layer, head) has max_{t>L} state RMS > "
        "rms_ratio × its RMS at t = L (non-finite values count as exceeding)")


# ----------------------------------------------------------------------------- the Result


@dataclass(kw_only=True)
class CollapseResult(Result):
    """Statistics of one long stream (see the module docstring for every definition).

    ``positions [C]``: tokens consumed at each snapshot (chunk end); ``state [C, n_layers, H, 6]``
    (``STAT_NAMES``: mean, var, rms, median, min, max of the carried state); ``cos [C, n_layers, H]``;
    ``decay [C, n_layers, H, 4]`` (``DECAY_NAMES``); ``chunk_loss [C]`` mean loss of the logits in
    each chunk (NaN without targets) and ``chunk_count [C]`` how many (row, position) pairs it
    scored; ``bucket_edges [K + 1]``, ``bucket_loss [K]``, ``bucket_accuracy [K]`` (greedy),
    ``bucket_count [K]``: per position bucket ``[0, L), [L, 2L), ...``;
    ``train_len``; ``loss_in`` (mean over ``[0, L)``), ``loss_beyond`` (worst bucket past L, NaN if
    none), ``rms_ratio [n_layers, H]`` (max RMS past L / RMS at L), ``collapsed`` (the rule) and
    ``onset`` (when collapsed: the first snapshot where chunk loss and RMS ratio both exceed; else None).
    """

    positions: Tensor
    state: Tensor
    cos: Tensor
    decay: Tensor
    chunk_loss: Tensor
    chunk_count: Tensor
    bucket_edges: Tensor
    bucket_loss: Tensor
    bucket_count: Tensor
    bucket_accuracy: Tensor
    train_len: int
    loss_in: float
    loss_beyond: float
    rms_ratio: Tensor
    collapsed: bool | None = None
    onset: int | None = None

    def __post_init__(self) -> None:
        if self.state.dim() != 4 or self.state.shape[-1] != len(STAT_NAMES):
            raise ValueError(f"state: expected [chunks, layers, heads, {len(STAT_NAMES)}], got {list(self.state.shape)}")

    def stat(self, name: str) -> Tensor:
        """``[C, n_layers, H]`` of one statistic (``STAT_NAMES`` or ``DECAY_NAMES`` or ``"cos"``)."""
        if name in STAT_NAMES:
            return self.state[..., STAT_NAMES.index(name)]
        if name in DECAY_NAMES:
            return self.decay[..., DECAY_NAMES.index(name)]
        if name == "cos":
            return self.cos
        raise ValueError(f"name: expected one of {[*STAT_NAMES, *DECAY_NAMES, 'cos']}, got {name!r}")

    @property
    def rms(self) -> Tensor:
        return self.stat("rms")

    def to_frame(self):
        """One row per (snapshot, layer, head): ``chunk, position, layer, head``, the state
        statistics, ``cos``, the decay statistics and the chunk's ``loss``."""
        import pandas as pd

        C, L, H, _ = self.state.shape
        idx = torch.cartesian_prod(torch.arange(C), torch.arange(L), torch.arange(H)).reshape(-1, 3)
        df = pd.DataFrame({"chunk": idx[:, 0].tolist(), "position": self.positions[idx[:, 0]].tolist(),
                           "layer": idx[:, 1].tolist(), "head": idx[:, 2].tolist()})
        for i, name in enumerate(STAT_NAMES):
            df[name] = self.state[..., i].reshape(-1).tolist()
        df["cos"] = self.cos.reshape(-1).tolist()
        for i, name in enumerate(DECAY_NAMES):
            df[name] = self.decay[..., i].reshape(-1).tolist()
        df["loss"] = self.chunk_loss[idx[:, 0]].tolist()
        return df

    def loss_frame(self):
        """One row per position bucket: ``start, end, loss, accuracy`` (greedy next-token),
        ``count`` (scored tokens), ``beyond`` (start ≥ train_len)."""
        import pandas as pd

        e = self.bucket_edges.tolist()
        return pd.DataFrame({"start": e[:-1], "end": e[1:], "loss": self.bucket_loss.tolist(),
                             "accuracy": self.bucket_accuracy.tolist(), "count": self.bucket_count.tolist(),
                             "beyond": [s >= self.train_len for s in e[:-1]]})

    def figure(self, heads: bool = False, log_x: bool = True, **layout: Any):
        """State RMS (per layer, mean over heads; every head with ``heads=True``) and chunk loss
        against position, a dashed line at the training length."""
        return _figure([("", self)], heads, log_x, **layout)


def _figure(results: list[tuple[str, CollapseResult]], heads: bool, log_x: bool, **layout: Any):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("state RMS", "next-token loss per chunk (nats)"))
    for label, r in results:
        x = r.positions.tolist()
        rms = r.rms
        prefix = f"{label} " if label else ""
        for l in range(rms.shape[1]):
            if heads:
                for h in range(rms.shape[2]):
                    fig.add_trace(go.Scatter(x=x, y=rms[:, l, h].tolist(), mode="lines",
                                             name=f"{prefix}L{l}H{h}"), row=1, col=1)
            else:
                fig.add_trace(go.Scatter(x=x, y=rms[:, l].mean(-1).tolist(), mode="lines",
                                         name=f"{prefix}layer {l}"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=r.chunk_loss.tolist(), mode="lines", name=f"{prefix}loss"),
                      row=2, col=1)
    L = results[0][1].train_len
    for row in (1, 2):
        fig.add_vline(x=L, line_dash="dash", line_color="red", row=row, col=1)
    verdicts = ", ".join(f"{lab or 'collapsed'}: {r.collapsed}" for lab, r in results)
    fig.update_layout(title=f"state collapse (train_len {L}; {verdicts})")
    fig.update_layout(**layout)  # the caller's settings win
    fig.update_xaxes(title_text="position (tokens)", type="log" if log_x else "linear", row=2, col=1)
    if log_x:
        fig.update_xaxes(type="log", row=1, col=1)
    return fig


@dataclass(kw_only=True)
class CollapseComparison(Result):
    """Before / after a mitigation: two :class:`CollapseResult` of the same stream."""

    before: CollapseResult
    after: CollapseResult

    def __post_init__(self) -> None:
        for name in ("before", "after"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, CollapseResult(**{k: v for k, v in value.items() if k != "type"}))

    def to_frame(self):
        """One row each (``run`` = before / after): ``loss_in, loss_beyond, max_rms_ratio,
        final_rms`` (mean over layers and heads at the last snapshot), ``collapsed, onset``."""
        import pandas as pd

        rows = []
        for run, r in (("before", self.before), ("after", self.after)):
            rows.append({"run": run, "loss_in": r.loss_in, "loss_beyond": r.loss_beyond,
                         "max_rms_ratio": float(r.rms_ratio.max()) if r.rms_ratio.numel() else math.nan,
                         "final_rms": float(r.rms[-1].mean()), "collapsed": r.collapsed, "onset": r.onset})
        return pd.DataFrame(rows)

    def figure(self, heads: bool = False, log_x: bool = True, **layout: Any):
        return _figure([("before", self.before), ("after", self.after)], heads, log_x, **layout)


def compare(before: CollapseResult, after: CollapseResult, mitigation: str = "") -> CollapseComparison:
    """Pair two runs of :func:`state_collapse` (same model and stream; ``after`` inside a
    mitigation context) into one Result."""
    for name, r in (("before", before), ("after", after)):
        if not isinstance(r, CollapseResult):
            raise TypeError(f"{name}: expected a CollapseResult, got {type(r).__name__}")
    if before.train_len != after.train_len or before.positions.shape != after.positions.shape:
        raise ValueError("after: expected a run over the same stream as before (train_len and snapshots differ)")
    return CollapseComparison(before=before, after=after,
                              settings={"mitigation": mitigation or after.settings.get("mitigations"),
                                        "model": before.settings.get("model")})
