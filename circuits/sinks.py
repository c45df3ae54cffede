"""Attention sinks: where heads dump attention, and ACT's calibration of the hidden ones (docs/methods.md §4).

Measures, for one head's pattern ``A [L, L]`` of one sequence (causal rows; T = L):

- ``score`` (the headline, ``HeadScores.scores``): the attention mass on position 0 averaged over
  the queries ``i ≥ 1``, ``mean_{i≥1} A[i, 0]`` (query 0 can only see itself, so it is left out).
- ``first_k_mass``: the mass on the first ``k`` tokens, ``mean_{i≥k} Σ_{j<k} A[i, j]`` over the
  queries that can see past them (StreamingLLM, Xiao et al. 2024, keeps k = 4 initial tokens).
- ``received`` ``r(j) = (1/(T−j)) Σ_{i≥j} A[i, j]``: the attention key ``j`` receives, averaged
  over the queries that can see it (StreamingLLM's sink metric; ACT, Yu et al. 2024, §3).
- ``hidden_sinks``: ACT's sinks beyond the first token, ``{j > 0 : r(j) > τ}`` (τ = 0.1), here
  read off the batch-mean ``r(j)``. ``r(j)`` averages over only ``T − j`` queries, so the last
  columns of local heads (previous-token, current-token) can pass τ too; ACT's rule does the same.

Scores, ``first_k_mass`` and ``received`` are averaged over the sequences. Prompts of different
lengths run as one right-padded batch (:func:`~seqlens.circuits.token_heads.pad_right`; exact for
causal models): pad queries are left out of every mean and ``r(j)`` of a prompt is NaN past its
end, so the results equal the prompts scored one at a time. On softmax / FoX layers
``score`` and ``first_k_mass`` come from :meth:`SeqModel.attention_stats` (``span_mass`` of key 0
and ``sink_mass`` of the first k keys, without the L×L matrix: Triton on CUDA, chunked torch on
CPU); ``r(j)`` needs column sums over all queries, so it is read off the pattern
(``SeqModel.mixer_pattern``, a few sequences at a time; pass ``received=False`` to skip it and
stay O(L) in memory). Recurrent mixers have no softmax rows: everything comes from their implicit
attention (docs/methods.md §7) normalised as ``|α_{t,s}| / Σ_s |α_{t,s}|`` so rows sum to 1.

ACT calibration (:func:`calibrate_sinks`, checked against ``GATECH-EIC/ACT``'s
``models/llama_modelling_aug.py``): on every forward, per calibrated head and per sequence, the
sinks ``S = {j > 0 : r(j) > τ}`` are found on the fly from the current pattern; ``A'[:, S] = β
A[:, S]`` and the freed mass ``m_i = (1−β) Σ_{j∈S} A[i, j]`` goes to the other columns of row i
in proportion to their attention. ACT's code keeps the first token out of S but lets it take its
proportional share (``feed_first=True``); ``feed_first=False`` leaves column 0 exactly as it was.
:func:`search_calibration_heads` is ACT's offline head search (``scripts/calibration.sh``: one
head at a time, layers 2 .. n−2 of a 32-layer Llama).
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from seqlens.circuits.ablation import check_heads
from seqlens.models.mixer import NotApplicableError, applies_to
from seqlens.circuits.heads import HeadScores
from seqlens.circuits.patterns import is_softmax_model, normalise_rows, resolve_normalisation
from seqlens.circuits.task_metric import resolve_task
from seqlens.result import Result

STATS_BACKENDS = ("auto", "triton", "chunked", "ref")
BACKENDS = (*STATS_BACKENDS, "pattern")
PATTERN_BUDGET = 2**25  # floats of [rows, H, T, T] pattern held at once while reading r(j)
DEFAULT_SEQ_LEN = 128


# ----------------------------------------------------------------------------- measures


def received_attention(pattern: Tensor) -> Tensor:
    """StreamingLLM / ACT received attention ``r(j) = (1/(T−j)) Σ_{i≥j} A[i, j]``, ``[..., T]``,
    of causal patterns ``[..., T, T]`` (query rows, key columns; zero above the diagonal)."""
    if pattern.dim() < 2 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern: expected square causal patterns [..., T, T], got {list(pattern.shape)}")
    T = pattern.shape[-1]
    n_queries = torch.arange(T, 0, -1, device=pattern.device, dtype=torch.float32)  # T − j
    return pattern.float().sum(-2) / n_queries


def sink_mask(received: Tensor, tau: float = 0.1) -> Tensor:
    """ACT's sinks ``S = {j > 0 : r(j) > τ}`` as a bool mask ``[..., T]`` of ``received [..., T]``
    (the initial sink j = 0 is kept, i.e. never in S)."""
    mask = received > tau
    mask[..., 0] = False
    return mask


# ----------------------------------------------------------------------------- ACT calibration


def calibrate_pattern(pattern: Tensor, sinks: Tensor, beta: float = 0.4, feed_first: bool = True) -> Tensor:
    """ACT's calibration of causal patterns ``[..., T, T]`` given sink masks ``sinks [..., T]``
    (True for the columns in S): ``A'[:, S] = β A[:, S]`` and the freed ``m_i = (1−β) Σ_{j∈S}
    A[i, j]`` is added to the other columns of row i in proportion to their attention
    (``A'[i, j] = A[i, j] (1 + m_i / Σ_{j'∉S} A[i, j'])``). Only allowed (causal) columns take
    mass, since masked entries are 0. ``feed_first=False`` also keeps column 0 out of the pool.
    Rows with no mass outside S (and column 0, when not fed) keep their original values, so every
    row still sums to 1. Computed in float32, returned in ``pattern``'s dtype."""
    A = pattern.float()
    in_s = sinks[..., None, :].expand_as(A)
    pool = A.masked_fill(in_s, 0.0)  # attention on the columns that may take the freed mass
    if not feed_first:
        pool[..., 0] = 0.0
    denom = pool.sum(-1, keepdim=True)
    freed = (1 - beta) * A.masked_fill(~in_s, 0.0).sum(-1, keepdim=True)  # m_i
    out = torch.where(in_s, beta * A, A + freed * pool / denom.clamp_min(1e-30))
    return torch.where(denom > 0, out, A).to(pattern.dtype)


def _check_tau_beta(tau: float, beta: float) -> None:
    for name, value in (("tau", tau), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")


def _calibration_hook(layer: int, heads: list[int], tau: float, beta: float, feed_first: bool,
                      found: dict[tuple[int, int], Tensor]):
    """A ``hook_pattern`` hook calibrating ``heads`` of ``layer``; records each head's sinks
    ``[B, T]`` of the latest forward in ``found``."""
    idx = torch.tensor(heads)

    def hook(pattern: Tensor, hook) -> Tensor:
        if pattern.shape[-1] != pattern.shape[-2]:
            raise NotImplementedError(
                f"calibrate_sinks: layer {layer} got a cached step ({pattern.shape[-2]} queries, "
                f"{pattern.shape[-1]} keys); ACT finds sinks from all queries of a full forward pass")
        sub = pattern[:, idx.to(pattern.device)]  # [B, h, T, T]
        sinks = sink_mask(received_attention(sub), tau)  # per sequence, on the fly (ACT)
        for n, h in enumerate(heads):
            found[(layer, h)] = sinks[:, n].cpu()
        out = pattern.clone()
        out[:, idx.to(pattern.device)] = calibrate_pattern(sub, sinks, beta, feed_first)
        return out

    return hook


@applies_to(lambda model: model.is_softmax, needs="softmax attention rows")
@contextlib.contextmanager
def calibrate_sinks(model, heads: Iterable[tuple[int, int]], tau: float = 0.1, beta: float = 0.4,
                    feed_first: bool = True) -> Iterator[dict[tuple[int, int], Tensor]]:
    """ACT attention calibration (Yu et al. 2024) of ``heads`` (``[(layer, head), ...]``) inside
    the ``with`` block: hooks at ``blocks.{l}.mixer.hook_pattern`` rewrite each calibrated head's
    pattern on every forward with :func:`calibrate_pattern`, sinks found per sequence from the
    current pattern (``S = {j > 0 : r(j) > τ}``). The hooks are removed on exit, also on
    exceptions. Yields a dict ``{(layer, head): bool [B, T]}`` with the sinks S of the latest
    forward. Hooks registered later on ``hook_pattern`` (``run_with_cache``) and
    ``attention_stats`` (explicit path) see the calibrated pattern; ``mixer_pattern`` reads the
    model's own. Full forwards only (cached steps raise).
    Recurrent mixers have no softmax rows to recalibrate: NotImplementedError."""
    if not is_softmax_model(model):
        raise NotApplicableError(
            f"calibrate_sinks: arch {model.cfg.arch!r} has no softmax attention rows (its implicit attention "
            "is not a distribution the model normalises); ACT calibration applies to softmax / FoX heads only")
    _check_tau_beta(tau, beta)
    found: dict[tuple[int, int], Tensor] = {}
    hooks = [(f"blocks.{l}.mixer.hook_pattern", _calibration_hook(l, hs, tau, beta, feed_first, found))
             for l, hs in sorted(check_heads(model, heads).items())]
    with model.hooks(fwd_hooks=hooks):
        yield found


# ----------------------------------------------------------------------------- sink scores


@dataclass(kw_only=True)
class SinkScores(HeadScores):
    """Attention-sink scores of every head (see the module docstring for the measures).

    ``scores [n_layers, n_heads]``: mass on position 0, ``mean_{i≥1} A[i, 0]`` (the headline,
    ``settings["score"]``); ``first_k_mass [n_layers, n_heads]``: mass on the first ``k`` tokens;
    ``received [n_layers, n_heads, T]``: ``r(j)`` (None when not computed); ``hidden_sinks``:
    ``[layer][head] -> [j, ...]``, the positions ``j > 0`` with ``r(j) > τ`` (None likewise).
    """

    first_k_mass: Tensor
    received: Tensor | None = None
    hidden_sinks: list[list[list[int]]] | None = None
    name: str = "sinks"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.first_k_mass = torch.as_tensor(self.first_k_mass, dtype=torch.float32)
        if self.first_k_mass.shape != self.scores.shape:
            raise ValueError(f"first_k_mass: expected shape {list(self.scores.shape)}, "
                             f"got {list(self.first_k_mass.shape)}")
        if self.received is not None:
            self.received = torch.as_tensor(self.received, dtype=torch.float32)
            if self.received.dim() != 3 or self.received.shape[:2] != self.scores.shape:
                raise ValueError(f"received: expected shape [n_layers, n_heads, T], "
                                 f"got {list(self.received.shape)}")

    def to_frame(self):
        """``pandas.DataFrame`` with ``layer, head, score, first_k_mass, hidden_sinks`` (one row per
        head; hidden sinks as a list of positions, None when not computed)."""
        df = super().to_frame()
        df["first_k_mass"] = self.first_k_mass.flatten().tolist()
        df["hidden_sinks"] = [None if self.hidden_sinks is None else self.hidden_sinks[l][h]
                              for l, h in zip(df["layer"], df["head"])]
        return df

    def received_frame(self):
        """Long ``pandas.DataFrame`` of ``r(j)``: ``layer, head, position, received``."""
        import pandas as pd

        if self.received is None:
            raise ValueError("received: not computed (sink_scores(..., received=False))")
        L, H, T = self.received.shape
        idx = torch.cartesian_prod(torch.arange(L), torch.arange(H), torch.arange(T))
        return pd.DataFrame({"layer": idx[:, 0].tolist(), "head": idx[:, 1].tolist(),
                             "position": idx[:, 2].tolist(), "received": self.received.flatten().tolist()})

    def figure(self, **layout: Any):
        """Heatmap of the score (layer × head); hover shows the score, the first-k mass and the
        hidden sinks."""
        fig = super().figure(**layout)
        k = self.settings.get("k", "k")
        text = [[f"L{l}H{h}: mass on token 0 {self.scores[l, h]:.4f}<br>first {k} tokens "
                 f"{self.first_k_mass[l, h]:.4f}" + ("" if self.hidden_sinks is None else
                                                     f"<br>hidden sinks {self.hidden_sinks[l][h]}")
                 for h in range(self.n_heads)] for l in range(self.n_layers)]
        fig.update_traces(text=text, colorbar={"title": "mass on 0"})
        fig.update_layout(title="attention sinks: mass on position 0 (mean over queries i ≥ 1)")
        return fig

    def received_figure(self, layer: int, head: int, **layout: Any):
        """Plotly line of ``r(j)`` over key positions for head ``(layer, head)``, with the threshold
        τ and the hidden sinks marked."""
        import plotly.graph_objects as go

        if self.received is None:
            raise ValueError("received: not computed (sink_scores(..., received=False))")
        _check_heads_in(self, layer, head)
        r = self.received[layer, head].tolist()
        sinks = self.hidden_sinks[layer][head] if self.hidden_sinks is not None else []
        fig = go.Figure(go.Scatter(x=list(range(len(r))), y=r, mode="lines+markers", name="r(j)"))
        fig.add_trace(go.Scatter(x=sinks, y=[r[j] for j in sinks], mode="markers", name="hidden sinks",
                                 marker={"size": 12, "symbol": "circle-open"}))
        fig.add_hline(y=self.settings.get("tau", 0.1), line_dash="dash", annotation_text="τ")
        fig.update_layout(title=f"L{layer}H{head}: attention received r(j)", xaxis_title="key position j",
                          yaxis_title="r(j)")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def _check_heads_in(res: HeadScores, layer: int, head: int) -> None:
    if not (isinstance(layer, int) and 0 <= layer < res.n_layers):
        raise ValueError(f"layer: expected an integer in [0, {res.n_layers}), got {layer!r}")
    if not (isinstance(head, int) and 0 <= head < res.n_heads):
        raise ValueError(f"head: expected an integer in [0, {res.n_heads}), got {head!r}")


def _sink_data(model, tokens: Tensor | None, prompts, seq_len: int | None, batch: int,
               seed: int) -> tuple[Tensor, Tensor, dict]:
    """``(tokens [B, T], mask [B, T] bool, settings entry)``: ``tokens`` as given, ``prompts``
    right-padded (mask False at pads; all True otherwise); otherwise the
    recipe's first evaluation batch (zoo organisms) or ``batch`` × ``seq_len`` uniform random tokens
    drawn with ``seed``, the first one replaced by the tokenizer's BOS when the model has one."""
    from seqlens.circuits.token_heads import pad_right, resolve_data

    if tokens is not None or prompts is not None:
        batches, info = resolve_data(model, tokens, prompts, seq_len=4, batch=1, seed=seed)[:2]  # lengths unused
        return (*pad_right(batches), info) if prompts is not None else _all_real(batches[0], info)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    recipe = model.recipe
    if recipe is not None:
        from seqlens.tasks import get_batch

        data = get_batch(recipe, 0, split="eval").tokens[:batch]
        return _all_real(data, {"data": f"recipe:{recipe.name}:eval", "batch": data.shape[0],
                                "seq_len": data.shape[1]})
    seq_len = min(DEFAULT_SEQ_LEN, model.cfg.n_ctx) if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len: expected an integer >= 2, got {seq_len!r}")
    g = torch.Generator().manual_seed(int(seed))
    data = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=g)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if bos is not None:  # a tokenizer's BOS leads real inputs, and sinks form on it
        data[:, 0] = int(bos)
    return _all_real(data, {"data": "uniform_random_tokens", "batch": batch, "seq_len": seq_len, "seed": seed,
                            "bos": bos})


def _all_real(tokens: Tensor, info: dict) -> tuple[Tensor, Tensor, dict]:
    return tokens, torch.ones(tokens.shape, dtype=torch.bool), info


def _hidden(received: Tensor, tau: float, min_queries: int) -> list[int]:
    """Positions ``0 < j ≤ T − min_queries`` with ``r(j) > τ`` of ``received [T]``."""
    T = received.shape[-1]
    return [j for j in sink_mask(received, tau).nonzero().flatten().tolist() if j <= T - min_queries]


def _check_sink_args(model, k: int, tau: float, backend: str, mask: Tensor, min_queries: int) -> None:
    T = int(mask.sum(1).min())
    if isinstance(min_queries, bool) or not isinstance(min_queries, int) or min_queries < 1:
        raise ValueError(f"min_queries: expected a positive integer, got {min_queries!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < T:
        raise ValueError(f"k: expected an integer in [1, {T - 1}] (queries i ≥ k must exist in the "
                         f"shortest sequence, T = {T}), got {k!r}")
    _check_tau_beta(tau, 0.0)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if not is_softmax_model(model) and backend not in ("auto", "pattern"):
        raise ValueError(f"backend: {backend!r} runs attention_stats, which arch {model.cfg.arch!r} lacks "
                         "(no softmax rows); use 'auto' or 'pattern'")


def _patterns(model, toks: Tensor, layer: int, mode: str) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, mixer_pattern of toks[rows])`` a few sequences at a time (≈ :data:`PATTERN_BUDGET`
    floats), float32, rows normalised as ``|α| / Σ|α|`` when ``mode == "abs_rows"``."""
    B, T = toks.shape
    heads = model.n_groups
    rows = max(1, PATTERN_BUDGET // (heads * T * T))
    for start in range(0, B, rows):
        p = model.mixer_pattern(toks[start:start + rows], layer).float()
        yield slice(start, start + rows), normalise_rows(p) if mode == "abs_rows" else p


def _query_mean(x: Tensor, real: Tensor, first: int) -> Tensor:
    """``mean_{i ≥ first, i real} x[b, h, i]``, ``[B, H]``, of per-query ``x [B, H, T]``
    (``real [B, T]``: the real positions, a prefix of each row)."""
    q = real[:, None, first:].to(x.dtype)
    return (x[..., first:] * q).sum(-1) / q.sum(-1)


def _masked_received(p: Tensor, real: Tensor) -> Tensor:
    """:func:`received_attention` of each row's real part, ``[B, H, T]``, NaN past its end."""
    n = real.sum(-1, keepdim=True)  # [B, 1]
    n_queries = (n - torch.arange(p.shape[-1], device=p.device)).clamp_min(1).float()  # T_b − j
    r = (p.float() * real[:, None, :, None]).sum(-2) / n_queries[:, None]
    return r.masked_fill(~real[:, None], float("nan"))


def _layer_masses(model, toks: Tensor, real: Tensor, layer: int, k: int, backend: str, mode: str,
                  need_received: bool) -> tuple[Tensor, Tensor, Tensor | None, str]:
    """``(score [B, H], first_k_mass [B, H], r [B, H, T] | None, backend that ran)`` of one
    layer over the real positions ``real [B, T]`` of right-padded ``toks``: masses from
    ``attention_stats`` on softmax layers (unless ``backend="pattern"``), from the pattern
    otherwise; ``r(j)`` always from the pattern."""
    real = real.to(toks.device)
    recv = None
    if is_softmax_model(model) and backend != "pattern":
        st = model.attention_stats(toks, layer, sink_k=k, span=(0, 1), backend=backend)
        score, first_k = _query_mean(st.span_mass.float(), real, 1), _query_mean(st.sink_mass.float(), real, k)
        if need_received:
            recv = torch.cat([_masked_received(p, real[rows]) for rows, p in _patterns(model, toks, layer, mode)])
        return score, first_k, recv, st.backend
    parts = []
    for rows, p in _patterns(model, toks, layer, mode):
        q = real[rows]
        parts.append((_query_mean(p[..., :, 0], q, 1), _query_mean(p[..., :k].sum(-1), q, k), _masked_received(p, q)))
    score, first_k, recv = (torch.cat(x) for x in zip(*parts))
    return score, first_k, recv if need_received else None, "pattern"


@torch.no_grad()
def sink_scores(model, tokens: Tensor | None = None, prompts: str | Sequence[str] | None = None, k: int = 4,
                tau: float = 0.1, seq_len: int | None = None, batch: int = 8, seed: int = 0,
                backend: str = "auto", received: bool = True, min_queries: int = 1) -> SinkScores:
    """Attention-sink scores of every head: :class:`SinkScores` with ``scores [L, H]`` (mass on
    position 0, mean over queries i ≥ 1), ``first_k_mass [L, H]``, ``received [L, H, T]`` (r(j),
    mean over sequences; with prompts of different lengths position j averages the sequences that
    reach it) and ``hidden_sinks`` (j > 0 with r(j) > ``tau``).

    Data: ``tokens [B, T]``, or ``prompts`` (``model.tokenizer``), or neither: the recipe's first
    evaluation batch for zoo organisms (``model.recipe``; its first ``batch`` rows), otherwise
    ``batch`` × ``seq_len`` uniform random tokens drawn with ``seed`` (``seq_len`` default
    min(128, n_ctx); position 0 set to the tokenizer's BOS when there is one); sinks show best on
    natural or task data. ``backend``: ``"auto"`` / ``"triton"`` / ``"chunked"`` / ``"ref"`` for
    ``attention_stats`` on softmax layers, or ``"pattern"`` to read everything off
    ``mixer_pattern``. ``received=False`` skips r(j) and the hidden sinks (no L×L pattern on
    softmax models). ``min_queries``: report hidden sinks only at positions seen by at least that
    many queries (``j ≤ T − min_queries``); 1 (default) is ACT's rule, a larger value drops the
    last columns that local heads push over τ (see the module docstring).
    """
    toks, real, info = _sink_data(model, tokens, prompts, seq_len, batch, seed)
    _check_sink_args(model, k, tau, backend, real, min_queries)
    mode = resolve_normalisation(model, "auto")
    score, first_k, recv, ran = [], [], [], set()
    for layer in range(model.cfg.n_layers):
        s, f, r, b = _layer_masses(model, toks.to(model.device), real, layer, k, backend, mode, received)
        ran.add(b)
        s, f, r = s.float().cpu(), f.float().cpu(), None if r is None else r.float().cpu()
        score.append(s.mean(0))
        first_k.append(f.mean(0))
        recv.append(None if r is None else r.nanmean(0))  # NaN: positions past a shorter prompt
    recv = torch.stack(recv) if received else None
    hidden = None if recv is None else [[_hidden(r_h, tau, min_queries) for r_h in r_l] for r_l in recv]
    settings = {**_sink_settings(model, info, k, tau, mode, sorted(ran), received), "min_queries": min_queries}
    return SinkScores(scores=torch.stack(score), first_k_mass=torch.stack(first_k), received=recv,
                      hidden_sinks=hidden, settings=settings)


def _sink_settings(model, info: dict, k: int, tau: float, mode: str, ran: list[str], received: bool) -> dict:
    return {
        "model": model.name or type(model).__name__, "arch": model.cfg.arch, **info,
        "k": k, "tau": tau, "score": "mass on position 0, mean_{i>=1} A[i,0], mean over sequences",
        "first_k_mass": f"mean_{{i>={k}}} sum_{{j<{k}}} A[i,j]",
        "received": "r(j) = (1/(T-j)) sum_{i>=j} A[i,j] (StreamingLLM), mean over sequences" if received
        else "not computed", "hidden_sinks": f"j > 0 with mean r(j) > {tau} (ACT)" if received else "not computed",
        "pattern": "softmax" if model.is_softmax else "implicit attention (METHODS.md §7)",
        "normalisation": mode, "backend": ran[0] if len(ran) == 1 else ran,
        "received_backend": "torch (SeqModel.mixer_pattern)" if received else None,
    }


# ----------------------------------------------------------------------------- ACT head search


@dataclass(kw_only=True)
class CalibrationSearch(Result):
    """ACT's offline head search: ``baseline`` (task metric without calibration), ``metric [L, H]``
    (the metric with that one head calibrated; NaN for excluded layers), ``kept`` (the heads that
    improved it, ``[(layer, head), ...]``), ``combined`` (the metric with all kept heads calibrated
    together; the baseline when none is kept) and ``higher_is_better``."""

    baseline: float
    metric: Tensor
    kept: list[tuple[int, int]]
    combined: float
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self.metric = torch.as_tensor(self.metric, dtype=torch.float64)  # metrics compare exactly
        if self.metric.dim() != 2:
            raise ValueError(f"metric: expected shape [n_layers, n_heads], got {list(self.metric.shape)}")
        self.kept = [tuple(int(x) for x in pair) for pair in self.kept]

    @property
    def improvement(self) -> Tensor:
        """``[L, H]`` change of the metric per calibrated head, signed so positive is better."""
        d = self.metric - self.baseline
        return d if self.higher_is_better else -d

    def to_frame(self):
        """``pandas.DataFrame``: ``layer, head, metric, improvement, excluded, kept``."""
        import pandas as pd

        L, H = self.metric.shape
        kept = set(self.kept)
        return pd.DataFrame({
            "layer": [l for l in range(L) for _ in range(H)], "head": [h for _ in range(L) for h in range(H)],
            "metric": self.metric.flatten().tolist(), "improvement": self.improvement.flatten().tolist(),
            "excluded": self.metric.isnan().flatten().tolist(),
            "kept": [(l, h) in kept for l in range(L) for h in range(H)]})

    def figure(self, **layout: Any):
        """Heatmap of the improvement per calibrated head (positive = better), kept heads starred."""
        import plotly.graph_objects as go

        imp = self.improvement
        L, H = imp.shape
        name = self.settings.get("task", "metric")
        text = [[f"L{l}H{h}: {name} {self.metric[l, h]:.4f} (baseline {self.baseline:.4f})"
                 + (" kept" if (l, h) in self.kept else "") for h in range(H)] for l in range(L)]
        fig = go.Figure(go.Heatmap(z=[[None if math.isnan(v) else v for v in row] for row in imp.tolist()],
                                   x=list(range(H)), y=list(range(L)), text=text, hoverinfo="text",
                                   colorscale="RdBu", zmid=0, colorbar={"title": "improvement"}))
        fig.add_trace(go.Scatter(x=[h for _, h in self.kept], y=[l for l, _ in self.kept], mode="markers",
                                 marker={"symbol": "star", "size": 14, "color": "gold"}, name="kept"))
        fig.update_layout(title=f"ACT calibration search: {name} (baseline {self.baseline:.4f}, kept "
                          f"{len(self.kept)} heads → {self.combined:.4f})", xaxis_title="head",
                          yaxis_title="layer")
        fig.update_layout(**layout)  # the caller's settings win
        return fig


def _search_layers(model, exclude_layers) -> list[int]:
    """Layers the search visits: all but ``exclude_layers`` (``"act"``: the first two and the last,
    as ACT's search over Llama-2's 32 layers visits layers 2..30)."""
    L = model.cfg.n_layers
    if exclude_layers == "act":
        if L <= 3:
            raise ValueError(f"exclude_layers: 'act' excludes the first two and the last layer, which is every "
                             f"layer of this {L}-layer model; pass exclude_layers=() to search all layers")
        excluded = {0, 1, L - 1}
    else:
        try:
            excluded = {operator.index(l) for l in exclude_layers}
        except TypeError:
            raise ValueError(f"exclude_layers: expected 'act' or a list of layer indices, "
                             f"got {exclude_layers!r}") from None
        if any(not 0 <= l < L for l in excluded):
            raise ValueError(f"exclude_layers: expected layers in [0, {L}), got {sorted(excluded)}")
    layers = [l for l in range(L) if l not in excluded]
    if not layers:
        raise ValueError(f"exclude_layers: {sorted(excluded)} leaves no layer to search")
    return layers


@contextlib.contextmanager
def _explicit_attention(model):
    """Observe every layer's ``hook_pattern`` (the hook returns nothing), so every forward takes the
    explicit attention path: a head whose calibration changes nothing then gives a bit-identical
    metric instead of the fused kernel's rounding differences."""
    with model.hooks(fwd_hooks=[(f"blocks.{l}.mixer.hook_pattern", lambda p, hook: None)
                                for l in range(model.cfg.n_layers)]):
        yield


@applies_to(lambda model: model.is_softmax, needs="softmax attention rows")
def search_calibration_heads(model, task: Any = None, tau: float = 0.1, beta: float = 0.4,
                             exclude_layers: str | Sequence[int] = "act", min_improvement: float = 0.0,
                             progress: Any = True) -> CalibrationSearch:
    """ACT's offline search (Yu et al. 2024): calibrate one head at a time
    (:func:`calibrate_sinks`), evaluate the task metric (:func:`resolve_task`: ``None`` = the zoo
    recipe's metric, a metric name, a TaskBatch, a callable ``model -> float`` or a TaskMetric),
    keep the heads whose improvement exceeds ``min_improvement``, then evaluate them together.
    ``exclude_layers``: ``"act"`` (the first two and the last layer; on models with ≤ 3 layers
    that is all of them, a ValueError) or a list of layers. Every forward of the search runs the
    explicit attention path (see :func:`_explicit_attention`). ``progress``: one step per searched head
    (:mod:`seqlens.progress`: a bool or ``callable(done, total)``)."""
    from seqlens.progress import progress_bar

    if not is_softmax_model(model):
        raise NotApplicableError(f"search_calibration_heads: arch {model.cfg.arch!r} has no softmax attention "
                                 "heads to calibrate (see calibrate_sinks)")
    _check_tau_beta(tau, beta)
    metric, layers, H = resolve_task(model, task), _search_layers(model, exclude_layers), model.n_groups
    per_head = torch.full((model.cfg.n_layers, H), float("nan"), dtype=torch.float64)
    with _explicit_attention(model):
        baseline = metric(model)
        for l, h in progress_bar(progress, [(l, h) for l in layers for h in range(H)], desc="ACT head search"):
            with calibrate_sinks(model, [(l, h)], tau, beta):
                per_head[l, h] = metric(model)
        kept = [(l, h) for l in layers for h in range(H)
                if metric.improvement(baseline, float(per_head[l, h])) > min_improvement]
        with calibrate_sinks(model, kept, tau, beta):
            combined = metric(model) if kept else baseline
    settings = {"model": model.name or type(model).__name__, "arch": model.cfg.arch,
                "task": metric.name, "tau": tau, "beta": beta, "searched_layers": layers,
                "exclude_layers": exclude_layers if isinstance(exclude_layers, str) else list(exclude_layers),
                "min_improvement": min_improvement, "attention_path": "explicit (hook_pattern)"}
    return CalibrationSearch(baseline=baseline, metric=per_head, kept=kept, combined=combined,
                             higher_is_better=metric.higher_is_better, settings=settings)
