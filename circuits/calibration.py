"""ACT attention calibration, before / after (Yu et al. 2024; docs/methods.md): what
:func:`~seqlens.circuits.sinks.calibrate_sinks` does to the calibrated heads' patterns and received
attention ``r(j)`` on one sequence (:func:`calibration_patterns`), and to the task metric
(:func:`calibration_metric`). Both return Results; the model is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from seqlens.result import Result


@dataclass(kw_only=True)
class CalibrationPatterns(Result):
    """Per calibrated head ``heads[i] = (layer, head)``: its pattern on ``tokens`` before and
    inside ``calibrate_sinks`` (``before`` / ``after [n, L, L]``), the received attention of both
    (``r_before`` / ``r_after [n, L]``) and the sinks ACT found (``sinks[i]``: positions j > 0)."""

    heads: list[tuple[int, int]]
    tokens: list[int]
    before: Tensor
    after: Tensor
    r_before: Tensor
    r_after: Tensor
    sinks: list[list[int]]
    tau: float
    beta: float
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        self.heads = [(int(l), int(h)) for l, h in self.heads]
        for name in ("before", "after", "r_before", "r_after"):
            setattr(self, name, torch.as_tensor(getattr(self, name), dtype=torch.float32))
        if self.labels is None:
            self.labels = [str(t) for t in self.tokens]

    def index(self, head: tuple[int, int]) -> int:
        key = (int(head[0]), int(head[1]))
        if key not in self.heads:
            raise ValueError(f"head: expected one of the calibrated heads {self.heads}, got {head!r}")
        return self.heads.index(key)

    def to_frame(self):
        """Long ``pandas.DataFrame``: ``layer, head, position, r_before, r_after, sink``."""
        import pandas as pd

        rows = [{"layer": l, "head": h, "position": j, "r_before": float(self.r_before[i, j]),
                 "r_after": float(self.r_after[i, j]), "sink": j in self.sinks[i]}
                for i, (l, h) in enumerate(self.heads) for j in range(len(self.tokens))]
        return pd.DataFrame(rows)

    def figure(self, head: tuple[int, int] | None = None, height_per_row: int = 420):
        """The pattern of ``head`` (default the first) before and after, side by side."""
        from seqlens.figures import pattern_figure

        i = 0 if head is None else self.index(head)
        name = "L{}H{}".format(*self.heads[i])
        return pattern_figure(torch.stack([self.before[i], self.after[i]]).numpy(), self.labels,
                              [f"{name} before", f"{name} after"], cols=2, height_per_row=height_per_row)

    def received_figure(self, head: tuple[int, int] | None = None, height: int = 420):
        """``r(j)`` of ``head`` before and after, with the sink threshold τ dashed."""
        from seqlens.figures import lines_figure

        i = 0 if head is None else self.index(head)
        return lines_figure({"before": self.r_before[i].tolist(), "after": self.r_after[i].tolist()},
                            title="L{}H{}: attention received r(j)".format(*self.heads[i]),
                            x_title="key position j", y_title="r(j)", hline=self.tau, hline_text="τ", height=height)


def calibration_patterns(model, tokens: Tensor | Sequence[int], heads: Iterable[tuple[int, int]],
                         tau: float = 0.1, beta: float = 0.4, labels: Sequence[str] | None = None
                         ) -> CalibrationPatterns:
    """Patterns of ``heads`` on one sequence ``tokens`` (``[L]`` / ``[1, L]``) before and inside
    ``calibrate_sinks(model, heads, tau, beta)``, read at ``hook_pattern`` with ``run_with_cache``
    (which sees the calibrated pattern), with ``received_attention`` of both."""
    from seqlens.circuits.ablation import check_heads
    from seqlens.circuits.sinks import calibrate_sinks, received_attention

    t = torch.as_tensor(tokens, dtype=torch.long)
    t = t[None] if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[0] != 1:
        raise ValueError(f"tokens: expected one sequence [L] or [1, L], got shape {list(t.shape)}")
    t = t.to(model.device)
    pairs = sorted((l, h) for l, hs in check_heads(model, heads).items() for h in hs)
    names = {f"blocks.{l}.mixer.hook_pattern" for l, _ in pairs}
    with torch.no_grad():
        _, before = model.run_with_cache(t, names_filter=lambda n: n in names)
        with calibrate_sinks(model, pairs, tau=tau, beta=beta) as found:
            _, after = model.run_with_cache(t, names_filter=lambda n: n in names)
            sinks = {key: value[0].nonzero().flatten().tolist() for key, value in found.items()}
    b = torch.stack([before[f"blocks.{l}.mixer.hook_pattern"][0, h].float().cpu() for l, h in pairs])
    a = torch.stack([after[f"blocks.{l}.mixer.hook_pattern"][0, h].float().cpu() for l, h in pairs])
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                "tau": tau, "beta": beta, "read_at": "hook_pattern (run_with_cache)"}
    return CalibrationPatterns(heads=pairs, tokens=t[0].tolist(), before=b, after=a,
                               r_before=torch.stack([received_attention(x) for x in b]),
                               r_after=torch.stack([received_attention(x) for x in a]),
                               sinks=[sinks.get(p, []) for p in pairs], tau=tau, beta=beta,
                               labels=None if labels is None else list(labels), settings=settings)


@dataclass(kw_only=True)
class CalibrationMetric(Result):
    """A task metric without (``before``) and with (``after``) ACT calibration of ``heads``."""

    metric: str
    before: float
    after: float
    higher_is_better: bool
    heads: list[tuple[int, int]] = field(default_factory=list)

    @property
    def improvement(self) -> float:
        """``after − before`` signed so that positive is better."""
        d = self.after - self.before
        return d if self.higher_is_better else -d

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"run": ["before", "after"], self.metric: [self.before, self.after]})

    def figure(self, **layout: Any):
        import plotly.graph_objects as go

        fig = go.Figure(go.Bar(x=["before", "after"], y=[self.before, self.after]))
        fig.update_layout(**{"title": f"{self.metric} before / after calibrating {len(self.heads)} head(s)",
                             "yaxis_title": self.metric, **layout})
        return fig


def calibration_metric(model, heads: Iterable[tuple[int, int]], tau: float = 0.1, beta: float = 0.4,
                       task: Any = None) -> CalibrationMetric:
    """The task metric (:func:`~seqlens.circuits.task_metric.resolve_task`: None = the zoo recipe's)
    without and with ``calibrate_sinks(model, heads, tau, beta)``."""
    from seqlens.circuits.ablation import check_heads
    from seqlens.circuits.sinks import calibrate_sinks
    from seqlens.circuits.task_metric import resolve_task

    pairs = sorted((l, h) for l, hs in check_heads(model, heads).items() for h in hs)
    metric = resolve_task(model, task)
    before = metric(model)
    with calibrate_sinks(model, pairs, tau=tau, beta=beta):
        after = metric(model)
    settings = {"model": getattr(model, "name", None) or type(model).__name__, "arch": model.cfg.arch,
                "task": metric.name, "tau": tau, "beta": beta}
    return CalibrationMetric(metric=metric.name, before=before, after=after,
                             higher_is_better=metric.higher_is_better, heads=pairs, settings=settings)
