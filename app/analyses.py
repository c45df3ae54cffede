"""Cached calls of library analyses, keyed on the model key and plain (hashable) inputs.

Streamlit cannot hash tensors or models, so every function here takes the model key (see
:mod:`seqlens.app.state`) and token ids as tuples, runs the library on this session's own copy of
the model (``state.load_model``) and returns what the library returns (Result objects). Nothing is
computed here: each function is a caching wrapper around one library call, plus the
``st.progress`` bar that the library's ``progress=`` callback drives.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

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
    random input, as ``seqlens hooks`` prints them (:mod:`seqlens.models.hooks`)."""
    from seqlens.models import hooks

    model = load_model(model_key)
    seq_len = min(seq_len, model.cfg.n_ctx)
    taps = hooks.default_taps(model, seq_len)
    fired, silent = hooks.record_hooks(model, hooks.random_tokens(model, 1, seq_len, 0), taps)
    return fired, silent, taps


@st.cache_data(show_spinner=False)
def zoo_table() -> list[dict[str, Any]]:
    from seqlens.models import zoo

    return zoo.table()


# ----------------------------------------------------------------------------- attention


@st.cache_data(show_spinner="Computing attention patterns ...", max_entries=64)
def patterns(model_key: str, ids: tuple[int, ...], layer: int, normalisation: str = "auto",
             labels: tuple[str, ...] | None = None):
    """``circuits.attention_patterns(model, ids, layer, normalisation, labels)``: a Patterns Result."""
    from seqlens.circuits import attention_patterns

    return attention_patterns(load_model(model_key), list(ids), layer, normalisation, labels=labels)


# ----------------------------------------------------------------------------- heads


@st.cache_data(show_spinner=False, max_entries=16)
def finder_tokens(model_key: str, data: DataKey) -> tuple[tuple[int, ...], ...] | None:
    """The token batch a data key stands for (None: the finder's own default data)."""
    if data[0] == "default":
        return None
    if data[0] == "tokens":
        return (tuple(data[1]),)
    if data[0] == "task":
        from seqlens.tasks import get_batch

        model = load_model(model_key)
        if model.recipe is None:
            raise ValueError("task data needs a zoo organism (this model has no training recipe)")
        tokens = get_batch(model.recipe, 0, split="eval").tokens[: int(data[1])]
        return tuple(tuple(int(t) for t in row) for row in tokens)
    raise ValueError(f"unknown data source {data!r}")


@contextmanager
def shared_patterns(model) -> Iterator[None]:
    """Inside the block ``model.mixer_pattern(tokens, layer)`` is computed once per (tokens,
    layer) and shared by every finder run there: each finder reads every layer's (implicit)
    attention, which on recurrent models costs far more than the scoring. ``model`` is this
    session's own copy (``state.load_model``), so nothing is shared with another session; the
    memo goes with the block. Callers get a clone (a finder may edit its pattern in place)."""
    memo: dict[tuple, Any] = {}
    compute = model.mixer_pattern
    previous = vars(model).get("mixer_pattern")  # an enclosing wrapper, restored on the way out

    def mixer_pattern(tokens, layer):
        key = (layer, tokens.dtype, tuple(tokens.shape), tokens.detach().cpu().numpy().tobytes())
        if key not in memo:
            memo[key] = compute(tokens, layer)
        return memo[key].clone()

    model.mixer_pattern = mixer_pattern  # an instance attribute shadows the method
    try:
        yield
    finally:
        if previous is None:
            del model.mixer_pattern
        else:
            model.mixer_pattern = previous


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


@st.cache_data(show_spinner="Calibrating ...", max_entries=16)
def calibration(model_key: str, ids: tuple[int, ...], heads: tuple[tuple[int, int], ...], tau: float,
                beta: float, labels: tuple[str, ...] | None = None):
    """``circuits.calibration_patterns(model, ids, heads, tau, beta)``: a CalibrationPatterns Result
    (each head's pattern and r(j) before / inside ``calibrate_sinks``, the sinks ACT found)."""
    from seqlens.circuits import calibration_patterns

    return calibration_patterns(load_model(model_key), list(ids), list(heads), tau=tau, beta=beta, labels=labels)


@st.cache_data(show_spinner="Evaluating the task metric with and without calibration ...", max_entries=16)
def calibration_metric(model_key: str, heads: tuple[tuple[int, int], ...], tau: float, beta: float):
    """``circuits.calibration_metric(model, heads, tau, beta)``: the organism's task metric without and
    with calibration, a CalibrationMetric Result."""
    from seqlens.circuits import calibration_metric as _calibration_metric

    return _calibration_metric(load_model(model_key), list(heads), tau=tau, beta=beta)


def progress_callback(label: str, unit: str = "", where: Any = None) -> Callable[[int, int | None], None]:
    """A library ``progress=`` callback (``callable(done, total)``) drawing an ``st.progress``:
    ``"<label>: done/total <unit>"``, redrawn at most ~100 times. ``.bar`` is the element."""
    bar = (where or st).progress(0.0, text=f"{label} ...")
    shown = [-1]
    suffix = f" {unit}" if unit else ""

    def report(done: int, total: int | None) -> None:
        frac = min(1.0, done / total) if total else 0.0
        if int(100 * frac) != shown[0]:
            shown[0] = int(100 * frac)
            bar.progress(frac, text=f"{label}: {done}/{total}{suffix}" if total else label)

    report.bar = bar  # type: ignore[attr-defined]
    return report


# ----------------------------------------------------------------------------- states (probes)
#
# The probes report progress through their ``progress=`` argument (seqlens.progress): a callback
# that draws one ``st.progress``. The bar is created inside the cached function, so a cache hit
# replays it at its final value instead of running anything.


@contextmanager
def _library_progress(label: str, unit: str = "") -> Iterator[Callable[[int, int | None], None]]:
    """A ``progress=`` callback drawing an ``st.progress`` for the block; the time taken at the end."""
    report = progress_callback(label, unit)
    t0 = time.perf_counter()
    yield report
    report.bar.progress(1.0, text=f"{label}: done in {time.perf_counter() - t0:.1f} s")  # type: ignore[attr-defined]


# mitigations of the States page as plain tuples: ("normalize_states", tau or None),
# ("forget_more", b_scale, decay_scale), ("state_window", window)
Mitigation = tuple


def _enter_mitigation(stack: ExitStack, model, spec: Mitigation):
    from seqlens.probes import collapse

    name, *args = spec
    if name == "normalize_states":
        return stack.enter_context(collapse.normalize_states(model, tau=args[0]))
    if name == "forget_more":
        return stack.enter_context(collapse.forget_more(model, b_scale=args[0], decay_scale=args[1]))
    if name == "state_window":
        return stack.enter_context(collapse.state_window(model, window=args[0]))
    raise ValueError(f"mitigation: unknown {name!r}")


@st.cache_data(show_spinner=False, max_entries=16)
def mitigation_problem(model_key: str, name: str) -> str | None:
    """Why mitigation ``name`` does not apply to the model (what the library's ``applies_to``
    predicate says it needs), or None."""
    from seqlens.models.mixer import not_applicable_reason
    from seqlens.probes import collapse

    if name not in ("normalize_states", "forget_more", "state_window"):
        raise ValueError(f"mitigation: unknown {name!r}")
    return not_applicable_reason(getattr(collapse, name), load_model(model_key))


@st.cache_data(show_spinner=False, max_entries=32)
def state_collapse(model_key: str, source: str, n_tokens: int,
                   mitigations: tuple[Mitigation, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """``(probes.collapse.state_collapse(model, source, n_tokens), notes)`` inside the mitigation
    context managers ``mitigations`` (none: the plain run); ``notes``: ``{"clipped": states
    rescaled, "tau": [n_layers, H]}`` when ``normalize_states`` is among them. Draws its progress."""
    from seqlens.probes import collapse

    model = load_model(model_key)
    label = "state collapse" + (" with " + ", ".join(m[0] for m in mitigations) if mitigations else "")
    notes: dict[str, Any] = {}
    with ExitStack() as stack, _library_progress(label, "tok") as progress:
        entered = [(_enter_mitigation(stack, model, m), m) for m in mitigations]
        res = collapse.state_collapse(model, source=source, n_tokens=n_tokens, progress=progress)
        for value, m in entered:
            if m[0] == "normalize_states":
                notes = {"clipped": int(value["clipped"].sum()), "tau": value["tau"].tolist()}
    return res, notes


@st.cache_data(show_spinner=False, max_entries=32)
def passkey_sweep(model_key: str, lengths: tuple[int, ...], depths: tuple[float, ...], n_trials: int,
                  measure: str = "exact"):
    """``probes.passkey_sweep(model, lengths, depths, n_trials, measure=measure)``: a PasskeySweep.
    Draws its progress."""
    from seqlens.probes import capacity

    model = load_model(model_key)
    with _library_progress(f"passkey sweep of {model_key.partition(':')[2]}", "batches") as progress:
        return capacity.passkey_sweep(model, list(lengths), list(depths), n_trials=n_trials, measure=measure,
                                      progress=progress)


def capacity_fit(sweeps: list, target: str = "longest_perfect", level: float = 0.5):
    """``(probes.capacity_fit(sweeps, target, level), warnings it raised)``."""
    import warnings

    from seqlens.probes import capacity

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = capacity.capacity_fit(sweeps, target=target, level=level)
    return fit, [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]


@st.cache_data(show_spinner=False, max_entries=16)
def lag_decoding(model_key: str, max_lag: int, n_seqs: int, max_features: int | None = 512):
    """``probes.lag_decoding(model, lags=range(max_lag + 1), n_seqs=n_seqs, max_features=...)``: a
    LagCurve. Draws its progress (one step per probe, after the activations are collected)."""
    from seqlens.probes import capacity

    model = load_model(model_key)
    with _library_progress("lag decoding", "probes") as progress:
        return capacity.lag_decoding(model, lags=range(max_lag + 1), n_seqs=n_seqs, max_features=max_features,
                                     progress=progress)


@st.cache_data(show_spinner=False, max_entries=16)
def gate_problem(model_key: str) -> str | None:
    """What gate saturation needs when the model lacks it (its ``applies_to`` predicate), else None."""
    from seqlens.models.mixer import not_applicable_reason
    from seqlens.probes import gate_saturation

    return not_applicable_reason(gate_saturation, load_model(model_key))


@st.cache_data(show_spinner="Reading the gates ...", max_entries=16)
def gate_saturation(model_key: str, low: float = 0.1, high: float = 0.9):
    """``probes.gate_saturation(model, low=low, high=high)`` on its default data: a GateSaturation."""
    from seqlens.probes import gate_saturation as _gate_saturation

    return _gate_saturation(load_model(model_key), low=low, high=high)


@st.cache_data(show_spinner="Correlating units with features of the text ...", max_entries=16)
def interpretable_cells(model_key: str, text: str | int, top_k: int = 5):
    """``probes.interpretable_cells(model, text, top_k=top_k)``: a CellReport; ``text``: Python
    source, or a number of bytes of the default text (``gates.default_text(n)``)."""
    from seqlens.probes import gates

    body = gates.default_text(text) if isinstance(text, int) else text
    return gates.interpretable_cells(load_model(model_key), text=body, top_k=top_k)


# ----------------------------------------------------------------------------- attribution (LRP)


@st.cache_data(show_spinner="Propagating relevance ...", max_entries=64)
def attribution(model_key: str, ids: tuple[int, ...], method: str, target: int | None = None):
    """``circuits.lrp.attribute(model, ids, target, method=method, hooks=[blocks.{l}.hook_resid_post ...])``:
    an Attribution Result explaining the logit of ``target`` (None: the model's prediction) at the
    last position, with each layer's relevance map."""
    from seqlens.circuits import lrp

    model = load_model(model_key)
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)] if method in ATTRIBUTION_HOOKED else None
    return lrp.attribute(model, as_tensor(ids), target=target, method=method, hooks=hooks)


ATTRIBUTION_HOOKED = ("auto", "attnlrp", "cp-lrp", "mambalrp", "lrp", "gxi")  # methods that record per-hook maps


@st.cache_data(show_spinner=False, max_entries=16)
def token_flipping(model_key: str, rows: tuple[tuple[int, ...], ...], methods: tuple[str, ...], steps: int,
                   seed: int = 0):
    """``circuits.lrp.token_flipping(model, rows, methods, steps=steps, seed=seed)``: FlippingCurves
    (MoRF / LeRF, ΔA^F per method). Draws its progress (one step per method)."""
    from seqlens.circuits import lrp

    model = load_model(model_key)
    with _library_progress(f"token flipping on {model_key.partition(':')[2]}", "methods") as progress:
        return lrp.token_flipping(model, as_tensor(rows), methods=list(methods), steps=steps, seed=seed,
                                  progress=progress)


# ----------------------------------------------------------------------------- features (SAEs)
#
# SAEs are not hashable either: the page names one by a key, "shipped:<org>/<name>" (a zoo SAE,
# seqlens.probes.sae.load) or "trained:<model key>|<hook>|<arch>|<d_sae>|<k>|<steps>" (trained here
# by train_feature_sae, deterministic for its settings, kept in this module's registry).

_TRAINED: dict[str, Any] = {}
FEATURE_SEQ_LEN = 128  # text windows of the page


def shipped_saes(model_key: str) -> list[str]:
    """Names of the shipped SAEs (``sae.list_shipped()``) trained on this model."""
    from seqlens.probes import sae

    name = load_model(model_key).name
    return [n for n in sae.list_shipped() if n.split("/", 1)[0] == name]


def all_shipped_saes() -> list[str]:
    """``sae.list_shipped()``: every SAE shipped with the zoo."""
    from seqlens.probes import sae

    return sae.list_shipped()


@st.cache_resource(show_spinner=False, max_entries=16)
def _shipped_sae(name: str):
    from seqlens.probes import sae

    return sae.load(name)


def get_sae(sae_key: str):
    """The SAE named by ``sae_key`` (see above)."""
    kind, _, value = sae_key.partition(":")
    if kind == "shipped":
        return _shipped_sae(value)
    if sae_key in _TRAINED:
        return _TRAINED[sae_key]
    raise KeyError(f"SAE {sae_key!r}: not trained in this process (train it again)")


@st.cache_data(show_spinner=False, max_entries=16)
def feature_text(model_key: str, n_seqs: int, seed: int = 0, split: str = "val") -> tuple[tuple[int, ...], ...]:
    """``n_seqs`` windows of stdlib text (``StdlibCorpus().batches(..., split=split)``) for
    byte-level models, else ``hooks.random_tokens`` (a model with its own tokenizer)."""
    from seqlens.corpus import StdlibCorpus
    from seqlens.models import hooks

    model = load_model(model_key)
    L = min(FEATURE_SEQ_LEN, model.cfg.n_ctx)
    if model.cfg.vocab_size == 256:
        t = next(iter(StdlibCorpus().batches(n_seqs, L, seed=seed, split=split, steps=1)))[:, :-1]
    else:
        t = hooks.random_tokens(model, n_seqs, L, seed)
    return tuple(tuple(r) for r in t.tolist())


def _positions(s) -> list[int] | None:
    pos = s.cfg.metadata.get("positions")
    return [p for p in pos if p < FEATURE_SEQ_LEN] if pos else None


@st.cache_data(show_spinner=False, max_entries=16)
def sae_metrics(model_key: str, sae_key: str, n_seqs: int):
    """``sae.evaluate(s, tokens, model=model)`` on ``n_seqs`` validation windows: an SAEMetrics
    (with ``feature_frequency``, the browser's sort key). Draws its progress."""
    from seqlens.probes import sae

    s = get_sae(sae_key)
    tokens = as_tensor(feature_text(model_key, n_seqs))
    with _library_progress("evaluating the SAE", "seq") as progress:
        return sae.evaluate(s, tokens, model=load_model(model_key),
                            positions=_positions(s), progress=progress)


@st.cache_data(show_spinner="Collecting the feature's top contexts ...", max_entries=64)
def feature_report(model_key: str, sae_key: str, feature: int, n_seqs: int):
    """``sae.feature_report(model, s, feature, tokens)`` on ``n_seqs`` validation windows."""
    from seqlens.probes import sae

    s = get_sae(sae_key)
    tokens = as_tensor(feature_text(model_key, n_seqs))
    return sae.feature_report(load_model(model_key), s, feature, tokens, positions=_positions(s))


@st.cache_data(show_spinner="Collecting every feature's top tokens ...", max_entries=16)
def feature_table(model_key: str, sae_key: str, n_seqs: int):
    """``sae.feature_table(model, s, tokens)`` on ``n_seqs`` validation windows: the browser's
    frequencies, max activations, top tokens and contexts (its search and sort)."""
    from seqlens.probes import sae

    s = get_sae(sae_key)
    tokens = as_tensor(feature_text(model_key, n_seqs))
    return sae.feature_table(load_model(model_key), s, tokens, positions=_positions(s))


def train_feature_sae(model_key: str, hook: str, architecture: str, d_sae: int, k: int, steps: int,
                      n_seqs: int) -> str:
    """``sae.harvest`` on ``n_seqs`` training-split windows, then ``sae.train_sae(..., seed=0)``;
    both draw progress. Returns the new SAE's key (already trained: returned at once)."""
    from seqlens.probes import sae

    key = f"trained:{model_key}|{hook}|{architecture}|{d_sae}|{k}|{steps}|{n_seqs}"
    if key not in _TRAINED:
        model = load_model(model_key)
        tokens = as_tensor(feature_text(model_key, n_seqs, split="train"))
        with _library_progress(f"harvesting {hook}", "seq") as progress:
            store = sae.harvest(model, hook, tokens, progress=progress)
        with _library_progress(f"training a {architecture} SAE", "steps") as progress:
            _TRAINED[key] = sae.train_sae(store, architecture=architecture, d_sae=d_sae, k=k, steps=steps,
                                          batch_size=min(256, len(store)), seed=0, progress=progress,
                                          log_every=max(1, steps // 50))
    return key


# ----------------------------------------------------------------------------- memory held (States page)


@st.cache_data(show_spinner="Measuring the memory the model carries ...", max_entries=16)
def state_memory(model_key: str, n_tokens: int, chunk: int = 32, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(positions, floats held)``: the size of the state the model carries
    (``model.forward_chunk``'s ``ModelState``: a KV cache or a fixed-size recurrent state, every
    layer) after reading each chunk of ``n_tokens`` seeded random tokens, as it runs, not as a
    formula says."""
    import torch

    model = load_model(model_key)
    n_tokens = min(int(n_tokens), int(model.cfg.n_ctx))  # learned positions end at n_ctx
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, int(model.cfg.vocab_size), (1, n_tokens), generator=g).to(model.device)
    state = model.init_state(1)
    positions, held = [0], [_numel(state.layers)]
    with torch.no_grad():
        for start in range(0, n_tokens, chunk):
            _, state = model.forward_chunk(tokens[:, start:start + chunk], state)
            positions.append(min(start + chunk, n_tokens))
            held.append(_numel(state.layers))
    return positions, held


def _numel(layers) -> int:
    return sum(int(v.numel()) for layer in layers for v in layer.values() if hasattr(v, "numel"))
