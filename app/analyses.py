"""Cached calls of library analyses, keyed on the model key and plain (hashable) inputs.

Streamlit cannot hash tensors or models, so every function here takes the model key (see
:mod:`seqlens.app.state`) and token ids as tuples, fetches the model from ``st.cache_resource``
and returns what the library returns (Result objects, numpy arrays). Nothing is computed here
that a library function does not compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from seqlens.app.state import load_model

# data sources of the Heads page: ("task", n_rows) | ("default",) | ("tokens", ids)
DataKey = tuple


def as_tensor(ids: tuple[int, ...] | tuple[tuple[int, ...], ...]):
    import torch

    t = torch.tensor(ids, dtype=torch.long)
    return t[None] if t.dim() == 1 else t


# ----------------------------------------------------------------------------- model page


@st.cache_data(show_spinner="Running the model once to record hook shapes ...")
def hook_table(model_key: str, seq_len: int = 8) -> tuple[list[tuple[str, list[int]]], list[str], list[int] | None]:
    """``(fired hooks with shapes, declared hooks that did not fire, tap positions)`` on a seeded
    random input, as ``seqlens hooks`` prints them."""
    from seqlens import cli

    model = load_model(model_key)
    seq_len = min(seq_len, model.cfg.n_ctx)
    tokens = cli.random_tokens(model, 1, seq_len, 0)
    taps = [seq_len - 1] if cli.supports_taps(model) else None
    fired, silent = cli.collect_hooks(model, tokens, taps)
    return fired, silent, taps


@st.cache_data(show_spinner=False)
def zoo_table() -> list[dict[str, Any]]:
    from seqlens.models import zoo

    return zoo.table()


# ----------------------------------------------------------------------------- attention


@st.cache_data(show_spinner="Computing attention patterns ...", max_entries=32)
def patterns(model_key: str, ids: tuple[int, ...], normalisation: str = "auto") -> list[np.ndarray]:
    """``[H, L, L]`` float32 pattern of every layer for one sequence (``layer_patterns``)."""
    from seqlens.circuits import layer_patterns

    model = load_model(model_key)
    return [p[0].cpu().numpy() for p in layer_patterns(model, as_tensor(ids).to(model.device), normalisation)]


# ----------------------------------------------------------------------------- heads


@st.cache_data(show_spinner=False, max_entries=16)
def finder_tokens(model_key: str, data: DataKey) -> tuple[tuple[int, ...], ...] | None:
    """The token batch a data key stands for (None: the finder's own default data)."""
    if data[0] == "default":
        return None
    if data[0] == "tokens":
        return (tuple(data[1]),)
    if data[0] == "task":
        from seqlens.models.train import get_batch

        model = load_model(model_key)
        if getattr(model, "recipe", None) is None:
            raise ValueError("task data needs a zoo organism (this model has no training recipe)")
        tokens = get_batch(model.recipe, 0, split="eval").tokens[: int(data[1])]
        return tuple(tuple(int(t) for t in row) for row in tokens)
    raise ValueError(f"unknown data source {data!r}")


@st.cache_data(show_spinner=False, max_entries=64)
def finder_scores(model_key: str, name: str, data: DataKey):
    """``(FINDERS[name](model, tokens=...), warnings it raised)``: a HeadScores Result and the
    messages of the warnings the finder issued (kept with the cached result so they show again)."""
    import warnings

    from seqlens.circuits import FINDERS

    model = load_model(model_key)
    rows = finder_tokens(model_key, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if rows is None:
            res = FINDERS[name](model)
        else:
            res = FINDERS[name](model, tokens=as_tensor(rows).to(model.device))
    return res, [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]


def default_data_row(model, scores) -> tuple[int, ...]:
    """First sequence of a finder's own default data, rebuilt from its recorded settings when it
    was repeated random tokens; otherwise a repeated random sequence (25 tokens twice)."""
    from seqlens.circuits import repeated_random_tokens

    s = scores.settings
    repeat, seed = (int(s["repeat_len"]), int(s.get("seed", 0))) if s.get("data") == "repeated_random_tokens" \
        else (25, 0)
    return tuple(int(t) for t in repeated_random_tokens(1, repeat, int(model.cfg.vocab_size), seed)[0])


# ----------------------------------------------------------------------------- sinks


@st.cache_data(show_spinner="Scoring attention sinks ...", max_entries=32)
def sink_scores(model_key: str, rows: tuple[tuple[int, ...], ...]):
    """``circuits.sinks.sink_scores(model, tokens)``: a SinkScores Result."""
    from seqlens.circuits.sinks import sink_scores as _sink_scores

    model = load_model(model_key)
    return _sink_scores(model, tokens=as_tensor(rows).to(model.device))


def _pattern_hooks(heads) -> list[str]:
    return [f"blocks.{l}.mixer.hook_pattern" for l in sorted({l for l, _ in heads})]


@st.cache_data(show_spinner="Calibrating ...", max_entries=16)
def calibration(model_key: str, ids: tuple[int, ...], heads: tuple[tuple[int, int], ...], tau: float,
                beta: float) -> dict[tuple[int, int], dict[str, Any]]:
    """Per calibrated head: its pattern on ``ids`` before and inside ``calibrate_sinks`` (read at
    ``hook_pattern`` with ``run_with_cache``, which sees the calibrated pattern), the received
    attention ``r(j)`` of both (``received_attention``) and the sinks ACT found."""
    from seqlens.circuits.sinks import calibrate_sinks, received_attention

    model = load_model(model_key)
    tokens = as_tensor(ids).to(model.device)
    names = _pattern_hooks(heads)
    _, before = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    with calibrate_sinks(model, list(heads), tau=tau, beta=beta) as found:
        _, after = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        sinks = {key: value[0].nonzero().flatten().tolist() for key, value in found.items()}
    out = {}
    for l, h in heads:
        b = before[f"blocks.{l}.mixer.hook_pattern"][0, h].float().cpu()
        a = after[f"blocks.{l}.mixer.hook_pattern"][0, h].float().cpu()
        out[(l, h)] = {"before": b.numpy(), "after": a.numpy(), "r_before": received_attention(b).numpy(),
                       "r_after": received_attention(a).numpy(), "sinks": sinks.get((l, h), [])}
    return out


@st.cache_data(show_spinner="Evaluating the task metric with and without calibration ...", max_entries=16)
def calibration_metric(model_key: str, heads: tuple[tuple[int, int], ...], tau: float,
                       beta: float) -> dict[str, Any]:
    """The organism's task metric (``resolve_task(model, None)``) without and with
    ``calibrate_sinks(model, heads, tau, beta)``."""
    from seqlens.circuits.sinks import calibrate_sinks
    from seqlens.circuits.task_metric import resolve_task

    model = load_model(model_key)
    metric = resolve_task(model, None)
    before = metric(model)
    with calibrate_sinks(model, list(heads), tau=tau, beta=beta):
        after = metric(model)
    return {"name": metric.name, "before": before, "after": after,
            "improvement": metric.improvement(before, after), "higher_is_better": metric.higher_is_better}


def progress_metric(model, bar, total: int, label: str):
    """The organism's task metric (``resolve_task(model, None)``) wrapped so that every evaluation
    advances ``bar`` (an ``st.progress``) by ``1 / total``: how the app shows the progress of
    library loops that evaluate a metric once per condition."""
    from seqlens.circuits.task_metric import TaskMetric, resolve_task

    base = resolve_task(model, None)
    done = [0]

    def counted(m):
        value = base.fn(m)
        done[0] += 1
        bar.progress(min(1.0, done[0] / total), text=f"{label}: {done[0]}/{total}")
        return value

    return TaskMetric(base.name, counted, base.higher_is_better)
