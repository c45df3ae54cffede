"""Length extrapolation on single long sequences: loss per token position (docs/methods.md §11).

FoX (Lin et al. 2025, ``eval/per_token_loss``) and Stuffed Mamba (Chen et al. 2024,
``analysis/eval_per_token.py``) judge a model past its training length ``L`` by its loss at each
token position of *one* long input per row. :func:`position_loss` computes that loss for a batch
of rows, on every architecture: one forward per batch of rows (``chunk=None``), or the rows run
in chunks carrying the state (``chunk=k``, the setting the state mitigations of
``probes.collapse_mitigations`` act in). Position ``t`` (0-based input index) scores
``−log p(target_t | tokens_{≤t})`` where ``mask`` allows; the greedy hit (argmax = target) is
recorded at the same positions.

Aggregates (:class:`PositionLoss`): per bucket of ``bucket`` positions, each row's mean over its
scored positions, then the mean and standard error **over rows** (tokens of one sequence are
correlated, rows are independent draws; SE = sample std / √rows, NaN with one row).
:meth:`PositionLoss.rise` is the per-row loss over ``[L, factor·L)`` minus that over ``[L/2, L)``.
:func:`held_out_documents` cuts held-out stdlib windows that never cross a file boundary (the
papers' rows are single documents).

A model with a learned position table cannot run past it (``model.context_limit``): longer input
is a ValueError naming ``tokens``, never clipped. Rotary attention, FoX and recurrent models
accept any length (their ``cfg.n_ctx`` records the training context only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.progress import Progress, progress_bar
from seqlens.result import Result
from seqlens.validate import positive_int


def mean_se(values: Tensor) -> tuple[float, float, int]:
    """``(mean, standard error, n)`` of the finite entries of ``values`` (SE NaN when n < 2)."""
    v = values[torch.isfinite(values)].double()
    n = int(v.numel())
    if n == 0:
        return math.nan, math.nan, 0
    se = float(v.std(correction=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(v.mean()), se, n


@dataclass(kw_only=True)
class PositionLoss(Result):
    """Per-token loss and greedy hits of single sequences.

    ``loss [rows, T]`` (nats) and ``hit [rows, T]`` (1.0 / 0.0) at the scored positions, NaN
    elsewhere; ``bucket``: the width of the position buckets the aggregates use. ``settings``:
    model, arch, ``train_len``, ``chunk``, ``seconds``, ...
    """

    loss: Tensor
    hit: Tensor
    bucket: int

    def __post_init__(self) -> None:
        self.loss, self.hit = torch.as_tensor(self.loss).float(), torch.as_tensor(self.hit).float()
        if self.loss.dim() != 2 or self.hit.shape != self.loss.shape:
            raise ValueError(f"loss / hit: expected two tensors of one shape [rows, T], got "
                             f"{list(self.loss.shape)} and {list(self.hit.shape)}")

    @property
    def edges(self) -> list[int]:
        """Bucket boundaries ``[0, b, 2b, ..., T]`` (the last bucket may be shorter)."""
        T = self.loss.shape[1]
        return list(range(0, T, self.bucket)) + [T]

    def row_mean(self, lo: int, hi: int, measure: str = "loss") -> Tensor:
        """Each row's mean ``measure`` (``"loss"`` or ``"hit"``) over its scored positions in
        ``[lo, hi)``: ``[rows]``, NaN for rows with none."""
        x = {"loss": self.loss, "hit": self.hit}[measure][:, lo:hi].double()
        scored = torch.isfinite(x)
        n = scored.sum(1)
        return torch.where(n > 0, torch.where(scored, x, 0.0).sum(1) / n.clamp_min(1), math.nan)

    def row_exact(self, lo: int, hi: int) -> Tensor:
        """1.0 where every scored position of the row in ``[lo, hi)`` is a hit (a passkey retrieved
        exactly), else 0.0; NaN for rows with none."""
        h = self.hit[:, lo:hi]
        scored = torch.isfinite(h)
        ok = torch.where(scored, h, 1.0).eq(1.0).all(1).double()
        return torch.where(scored.any(1), ok, math.nan)

    def span(self, lo: int, hi: int, measure: str = "loss") -> tuple[float, float, int]:
        """``(mean, SE, rows)`` over rows of :meth:`row_mean` on ``[lo, hi)``."""
        return mean_se(self.row_mean(lo, hi, measure))

    def rise(self, train_len: int, factor: int = 4) -> tuple[float, float, int]:
        """``(mean, SE, rows)`` over rows of the loss over ``[L, factor·L)`` minus that over
        ``[L/2, L)`` (docs/methods.md §11), ``L = train_len``; rows need positions in both."""
        if train_len < 2 or factor * train_len > self.loss.shape[1]:
            raise ValueError(f"train_len: need 2 ≤ L and {factor}·L ≤ {self.loss.shape[1]} positions, got L={train_len}")
        d = self.row_mean(train_len, factor * train_len) - self.row_mean(train_len // 2, train_len)
        return mean_se(d)

    def buckets(self) -> list[dict[str, float]]:
        """Per bucket: ``start, end, loss, loss_se, acc, acc_se, rows`` (over rows)."""
        out = []
        for lo, hi in zip(self.edges[:-1], self.edges[1:]):
            loss, loss_se, n = self.span(lo, hi)
            acc, acc_se, _ = self.span(lo, hi, "hit")
            out.append({"start": lo, "end": hi, "loss": loss, "loss_se": loss_se, "acc": acc,
                        "acc_se": acc_se, "rows": n})
        return out

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.buckets())

    def figure(self, name: str | None = None, fig=None):
        """Loss per bucket (mean ± SE over rows) against the bucket's middle position, the
        training length marked; ``fig`` adds the trace to an existing figure."""
        import plotly.graph_objects as go

        rows = self.buckets()
        fig = fig or go.Figure()
        fig.add_trace(go.Scatter(x=[(r["start"] + r["end"] - 1) / 2 for r in rows], y=[r["loss"] for r in rows],
                                 error_y={"type": "data", "array": [0 if math.isnan(r["loss_se"]) else r["loss_se"]
                                                                    for r in rows]},
                                 mode="lines+markers", name=name or self.settings.get("model", "model")))
        if self.settings.get("train_len"):
            fig.add_vline(x=self.settings["train_len"], line_dash="dash")
        fig.update_layout(xaxis_title="token position", yaxis_title="loss (nats), mean ± SE over sequences")
        return fig


def _check_inputs(model, tokens: Tensor, targets: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs, targets, mask)`` checked: 2-D integer ids in the vocabulary, equal shapes, and
    no more positions than a learned position table holds."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"tokens: expected an integer tensor [rows, T], got "
                         f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
    if targets is None:
        if tokens.shape[1] < 2:
            raise ValueError(f"tokens: without targets, expected windows [rows, T + 1] with T ≥ 1, got {list(tokens.shape)}")
        tokens, targets = tokens[:, :-1], tokens[:, 1:]
    elif not isinstance(targets, Tensor) or targets.shape != tokens.shape:
        raise ValueError(f"targets: expected the shape of tokens {list(tokens.shape)}, got "
                         f"{list(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__}")
    V = model.cfg.vocab_size
    for name, t in (("tokens", tokens), ("targets", targets)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= V):
            raise ValueError(f"{name}: ids must lie in [0, {V}) (the model's vocab_size), got [{int(t.min())}, {int(t.max())}]")
    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    elif not isinstance(mask, Tensor) or mask.shape != tokens.shape:
        raise ValueError(f"mask: expected a bool tensor of shape {list(tokens.shape)}, got "
                         f"{list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    limit = model.context_limit
    if limit is not None and tokens.shape[1] > limit:
        raise ValueError(f"tokens: {tokens.shape[1]} positions exceed the model's context_limit {limit} (a learned "
                         "position table cannot extrapolate); position_loss never clips: pass shorter rows")
    return tokens, targets, mask.bool()


@torch.no_grad()
def _logits(model, tokens: Tensor, chunk: int | None) -> Tensor:
    """Logits ``[B, T, V]``: one forward, or ``model.stream`` in chunks carrying the state."""
    if chunk is None:
        return model(tokens)
    return model.stream(tokens, chunk_size=chunk).logits


@torch.no_grad()
def position_loss(model, tokens: Tensor, targets: Tensor | None = None, mask: Tensor | None = None, *,
                  bucket: int | None = None, batch_size: int = 8, chunk: int | None = None,
                  progress: Progress = False) -> PositionLoss:
    """Loss and greedy hit at every scored position of single sequences (module docstring).

    ``tokens``: ``[rows, T + 1]`` windows (inputs ``[:, :-1]``, targets ``[:, 1:]``), or
    ``[rows, T]`` inputs with ``targets [rows, T]``; ``mask [rows, T]`` the positions to score
    (default all); ``bucket`` the width of the position buckets (default: the model's training
    length, ``probes.collapse_sources.train_length``); ``batch_size`` rows per forward;
    ``chunk``: None for one forward per batch, or run in chunks of that many tokens carrying the
    state. ``progress``: a bar over rows (True / callable, see ``seqlens.progress``).
    """
    import time

    from seqlens.probes.collapse_sources import train_length

    inputs, targets, mask = _check_inputs(model, tokens, targets, mask)
    batch_size = positive_int("batch_size", batch_size)
    chunk = None if chunk is None else positive_int("chunk", chunk)
    L, source = train_length(model)
    bucket = positive_int("bucket", bucket if bucket is not None else L)
    device = next(model.parameters()).device
    was_training, t0 = model.training, time.time()
    model.eval()
    loss = torch.full(inputs.shape, math.nan)
    hit = torch.full(inputs.shape, math.nan)
    try:
        with progress_bar(progress, total=inputs.shape[0], desc="position loss", unit="row") as bar:
            for s in range(0, inputs.shape[0], batch_size):
                x, y, m = (t[s:s + batch_size].to(device) for t in (inputs, targets, mask))
                logits = _logits(model, x, chunk).float()
                ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").cpu()
                ok = (logits.argmax(-1) == y).float().cpu()
                m = m.cpu()
                loss[s:s + len(x)] = torch.where(m, ce, math.nan)
                hit[s:s + len(x)] = torch.where(m, ok, math.nan)
                bar.update(len(x))
    finally:
        model.train(was_training)
    settings = {"model": getattr(model, "name", None) or model.cfg.arch, "arch": model.cfg.arch, "train_len": L,
                "train_len_source": source, "rows": int(inputs.shape[0]), "positions": int(inputs.shape[1]),
                "chunk": chunk, "batch_size": batch_size, "seconds": round(time.time() - t0, 3)}
    return PositionLoss(loss=loss, hit=hit, bucket=bucket, settings=settings)


def held_out_documents(rows: int, length: int, seed: int = 0, split: str = "val") -> Tensor:
    """``rows`` windows ``[rows, length + 1]`` of the stdlib corpus ``split`` (validation by
    default: files no organism trained on), each inside one file (never across the NUL that ends
    a file: the papers' rows are single documents). Candidates are every file's non-overlapping
    windows; ``rows`` of them are drawn without replacement with ``seed``."""
    from seqlens.corpus import EOS_ID, StdlibCorpus

    rows, length = positive_int("rows", rows), positive_int("length", length)
    data = StdlibCorpus().tokens(split)  # type: ignore[arg-type]
    ends = torch.nonzero(data == EOS_ID).flatten().tolist()
    starts = [s + k for s, e in zip([0] + [e + 1 for e in ends[:-1]], ends) for k in range(0, e - s - length, length)]
    if len(starts) < rows:
        raise ValueError(f"rows: the {split} split has only {len(starts)} windows of {length + 1} bytes inside one file, "
                         f"asked for {rows}")
    pick = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
    idx = torch.tensor(starts)[pick]
    return data[idx[:, None] + torch.arange(length + 1)].long()


def task_prompts(model, seq_len: int, rows: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens, targets, mask)`` of ``rows`` fresh single prompts of ``seq_len`` tokens from the
    task ``model.recipe`` was trained on (its final task's kwargs, ``seq_len`` replaced; the mask
    is the task's ``loss_mask``, e.g. a passkey's key digits). ValueError for a text recipe or
    a model without one."""
    from seqlens.tasks import make_task, task_kwargs

    recipe = getattr(model, "recipe", None)
    if recipe is None or not str(recipe.data).startswith("task:"):
        raise ValueError(f"model: task_prompts needs an organism trained on a task ('task:<name>'), got "
                         f"{None if recipe is None else recipe.data!r}")
    kwargs = {**task_kwargs(recipe), "seq_len": positive_int("seq_len", seq_len)}
    tb = make_task(recipe.data.removeprefix("task:"), batch=positive_int("rows", rows), seed=seed, **kwargs)
    return tb.tokens, tb.targets, tb.loss_mask


def prompt_lengths(model, lengths: list[int], rows: int, seed: int = 0, chunk: int | None = None,
                   batch_size: int = 16, progress: Progress = False) -> dict[int, dict[str, float]]:
    """Per prompt length: ``loss`` (mean over a prompt's scored positions), ``acc`` (their greedy
    hits) and ``exact`` (all of them hit: the passkey retrieved), each with its SE over the
    ``rows`` prompts (:func:`task_prompts`, seed ``seed + length``), via :func:`position_loss`."""
    out = {}
    for n in lengths:
        x, y, m = task_prompts(model, n, rows, seed + n)
        r = position_loss(model, x, y, m, bucket=n, batch_size=batch_size, chunk=chunk, progress=progress)
        T = r.loss.shape[1]
        stats = {"loss": mean_se(r.row_mean(0, T)), "acc": mean_se(r.row_mean(0, T, "hit")),
                 "exact": mean_se(r.row_exact(0, T))}
        out[n] = {**{k: v[0] for k, v in stats.items()}, **{f"{k}_se": v[1] for k, v in stats.items()},
                  "rows": stats["loss"][2]}
    return out
