"""States page: what recurrent states hold and how they fail (``seqlens.probes``): state collapse
past the training length with the Stuffed Mamba mitigations (before / after), passkey capacity
(sweep heatmaps, the capacity fit across the passkey organisms, lag decoding), gate saturation and
interpretable cells with their highlighted text. Everything runs on a button, cached per model and
settings (``analyses``); long runs draw the library's progress."""

import plotly.graph_objects as go
import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.show import method_line, result_figure, tidy
from seqlens.probes import collapse
from seqlens.probes.outliers import is_byte_model
from seqlens.tasks import task_kwargs

SOURCE_HELP = {"newlines": "newlines: one token repeated (the Stuffed Mamba prompt)",
               "repeat": "repeat: a sentence repeated (random tokens for task vocabularies)",
               "task": "task: the model's own training stream (task sequences or stdlib text)"}
LENGTH_OPTIONS = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
DEPTH_OPTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]
FIT_LENGTHS = [64, 128, 256, 512, 1024]
FIT_DEPTHS = [0.0, 0.5, 1.0]
MAX_TOKENS = 65536  # the longest stream the collapse probe runs from the page
MAX_CELL_TEXT = 65536  # bytes of the user's own text the interpretable-cells probe runs on
MEMORY_TOKENS = 512  # tokens streamed for the memory-carried figure (capped at n_ctx)
MITIGATIONS = {"normalize_states": "Normalize states", "forget_more": "Forget more", "state_window": "State window"}

model_key, model = state.current_model()
cfg = model.cfg
recipe = model.recipe
label = state.model_label(model_key)
runs = st.session_state.setdefault("states_runs", {})  # what -> the arguments last run (model key first)

st.title("States")
method_line("What a model carries from token to token (a fixed-size recurrent state, or an attention model's "
            "growing KV cache), how it fails past the training length (Stuffed Mamba, Chen et al. 2024), how much "
            "it can hold (passkey, lag decoding) and what its gates and cells do (Karpathy et al. 2015).",
            "§5 (collapse and capacity)")


def widget(kind, label_, *args, key, default=None, options=None, where=st, **kwargs):
    """A widget whose value survives page switches (``state.persistent``)."""
    value = getattr(where, kind)(label_, *args, key=state.persistent(key, default, options), **kwargs)
    return state.remember(key, value)


def computed(what: str, title: str, args: tuple, button: bool, compute, idle: str):
    """``compute()`` (a cached analysis) when ``what`` was just asked for (``button``) or last run
    with these very ``args`` (the cached result then comes back at once), else None with the hint
    ``idle``. A failure becomes ``st.error("<title>: <message>")`` and is remembered: shown again,
    not recomputed, until the arguments change or the button is pressed again."""
    failed = st.session_state.setdefault("states_failed", {})  # what -> (args, message)
    if button:
        runs[what] = args
        failed.pop(what, None)
    if what in failed and failed[what][0] == args:
        st.error(failed[what][1])
        return None
    if runs.get(what) != args:
        st.info(idle)
        return None
    try:
        return compute()
    except Exception as e:  # noqa: BLE001 — a message, never a traceback
        failed[what] = (args, f"{title}: {state.error_text(e)}")
        runs.pop(what, None)
        st.error(failed[what][1])
        return None


def shown_bounds(n: int, least: int = 100, most: int = 3000) -> tuple[int, int, int]:
    """``(min, max, default)`` of a "how much of a text of ``n`` units to show" input: never a
    minimum above the maximum, whatever the text's length (a short text: all of it)."""
    return min(least, n), n, min(most, n)


def yes_no(value) -> str:
    return "—" if value is None else ("yes" if value else "no")


L, L_from = collapse.train_length(model)
tab_collapse, tab_capacity, tab_gates = st.tabs(["Collapse", "Capacity", "Gates"])

# ============================================================================= collapse
with tab_collapse:
    st.subheader("Memory carried vs tokens read")
    with state.errors_shown("Memory carried"):
        positions, held = analyses.state_memory(model_key, MEMORY_TOKENS)
        growth = (held[-1] - held[1]) / max(positions[-1] - positions[1], 1)
        fig = go.Figure(go.Scatter(x=positions, y=held, mode="lines+markers", name=label))
        fig.update_layout(title=f"{label}: floats in the carried state after each chunk of seeded random tokens",
                          xaxis_title="tokens read", yaxis_title="floats held (every layer)", height=320,
                          yaxis_rangemode="tozero")
        result_figure(fig, "state_memory", note=(
            f"A KV cache: it grows by {growth:,.0f} floats per token, without bound (up to n_ctx = {cfg.n_ctx})."
            if growth > 0 else f"A fixed-size state: {held[-1]:,} floats whatever the length."
            ) + " Measured on model.forward_chunk's state, chunk by chunk.")
    st.subheader("State collapse")
    st.caption(f"Streams a long input through the model in chunks of {collapse.DEFAULT_CHUNK} tokens, carrying "
               f"the state, and records the state's statistics and the next-token loss per chunk. Training "
               f"length L = {L} tokens (from {L_from}), marked by the dashed line.")
    if not model.supports_state_taps:
        st.info(f"{cfg.arch} has no fixed-size recurrent state: the statistics are those of the keys and values "
                "each chunk writes to the KV cache (memory grows with the length). A mitigation that does not "
                "apply says why under its toggle; the state window trims the cache.")
    sources = [s for s in collapse.SOURCES if s != "task" or recipe is not None]
    c1, c2, c3 = st.columns([2, 1, 1])
    source = widget("radio", "Input", sources, key="states_source", default=sources[0], options=sources,
                    where=c1, format_func=lambda s: SOURCE_HELP.get(s, s))
    n_tokens = int(widget("number_input", "Tokens", min_value=128, max_value=MAX_TOKENS, step=1024,
                          key="states_n_tokens", default=4096, where=c2,
                          help=f"Stream length; past 2·L = {2 * L} the collapse rule can judge."))
    run_collapse = c3.button("Run collapse probe", type="primary", key="states_collapse_run")
    base_args = (model_key, source, n_tokens)
    out = computed("collapse", "State collapse", base_args, run_collapse,
                   lambda: analyses.state_collapse(*base_args),
                   "Press **Run collapse probe** to stream the input (long streams take a while on CPU).")
    base = None if out is None else out[0]
    if base is not None:
        c1, c2, c3, c4, c5 = st.columns(5)
        c1.metric("Collapsed", yes_no(base.collapsed),
                  help="None (—): the stream does not go past L far enough to judge.")
        c2.metric(f"Loss in [0, {L})", f"{base.loss_in:.3f}")
        c3.metric("Worst loss past L", f"{base.loss_beyond:.3f}")
        ratio = float(base.rms_ratio.max()) if base.rms_ratio.numel() else float("nan")
        c4.metric("Max RMS ratio past L", f"{ratio:.2f}")
        c5.metric("Onset", "—" if base.onset is None else f"{base.onset}")
        c1, c2 = st.columns(2)
        every_head = c1.toggle("Every head", key="states_collapse_heads", help="One RMS line per head, "
                               "not the mean over each layer's heads.")
        log_x = c2.toggle("Log position axis", value=True, key="states_collapse_logx")
        result_figure(base.figure(heads=every_head, log_x=log_x, height=560), "collapse_figure", base, title_chars=90)
        s = base.settings
        st.caption(f"Rule (loss_margin = {s['loss_margin']} nats, rms_ratio = {s['rms_ratio']}): {s['rule']}.")
        st.caption(f"Input: {s['source_description']}; loss over {s['loss_positions']}; state: {s['state']}; "
                   f"{s['n_tokens']} tokens in {s['elapsed_s']:.1f} s.")
        with st.expander("Loss per position bucket"):
            st.dataframe(base.loss_frame(), hide_index=True, width="stretch")

    # ------------------------------------------------------------------------- mitigations
    st.subheader("Mitigations: before / after")
    st.caption("The same stream again inside the mitigation context managers of probes.collapse (several at "
               "once stack). Normalize states and the state window act on the state carried between chunks; "
               "forget more edits the decay and the write of every token.")
    problems = {name: analyses.mitigation_problem(model_key, name) for name in MITIGATIONS}
    chosen: list[tuple] = []
    cols = st.columns(3)
    for col, (name, title) in zip(cols, MITIGATIONS.items()):
        with col:
            on = widget("toggle", title, key=f"states_mit_{name}", default=False, disabled=problems[name] is not None)
            if problems[name] is not None:
                st.caption(f"Not applicable: {problems[name]}")
                continue
            if name == "normalize_states":
                modes = (["largest norms on the task stream"] if recipe is not None else []) + ["a fixed τ"]
                mode = widget("radio", "Threshold τ", modes, key="states_norm_mode", default=modes[0],
                              options=modes, help="h ← h·τ/‖h‖ when ‖h‖ > τ, per layer and head. Default: "
                              "the largest head norms on 8 rows of the model's own task stream of length L.")
                tau = None
                if mode == "a fixed τ":
                    tau = float(widget("number_input", "τ", min_value=1e-3, key="states_norm_tau",
                                       default=1.0, step=0.5, format="%.3f"))
                if on:
                    chosen.append(("normalize_states", tau))
            elif name == "forget_more":
                b = widget("slider", "b_scale (write ×)", 0.05, 2.0, step=0.05, key="states_fm_b", default=0.5)
                c = widget("slider", "decay_scale (decay ^)", 0.25, 4.0, step=0.25, key="states_fm_c", default=1.0,
                           help="Every decay a becomes a^c (log decay × c); c > 1 forgets faster.")
                if on:
                    chosen.append(("forget_more", float(b), float(c)))
            else:
                w = int(widget("number_input", "Window (tokens)", min_value=1, max_value=MAX_TOKENS,
                               step=collapse.DEFAULT_CHUNK, key="states_window",
                               default=min(max(L, collapse.DEFAULT_CHUNK), MAX_TOKENS),  # n_ctx may exceed it
                               help=f"Rounded up to whole chunks of {collapse.DEFAULT_CHUNK} tokens."))
                if on:
                    chosen.append(("state_window", w))
    run_mit = st.button("Run with mitigations", key="states_mit_run", disabled=not chosen,
                        help="Runs the plain stream too (cached) for the before / after comparison.")
    mit_args = (*base_args, tuple(chosen))

    def mitigated():
        before, _ = analyses.state_collapse(*base_args)
        after, notes = analyses.state_collapse(*base_args, tuple(chosen))
        what = ", ".join(f"{m[0]}({', '.join(str(a) for a in m[1:] if a is not None)})" for m in chosen)
        return collapse.compare(before, after, mitigation=what), notes

    if not chosen:
        st.caption("Switch on a mitigation to compare.")
    elif (out := computed("mitigation", "Mitigation", mit_args, run_mit, mitigated,
                          "Press **Run with mitigations** for the before / after comparison.")) is not None:
        comp, notes = out
        with state.errors_shown("Mitigation"):
            result_figure(comp.figure(log_x=True, height=560), "collapse_compare", comp, title_chars=90)
            st.dataframe(comp.to_frame(), hide_index=True, width="stretch")
            if "clipped" in notes:
                st.caption(f"normalize_states rescaled {notes['clipped']} (chunk, row, layer, head) states.")

# ============================================================================= capacity
with tab_capacity:
    st.subheader("Passkey sweep")
    byte_or_text = model.tokenizer is not None or cfg.vocab_size >= 256
    if not byte_or_text:
        st.info(f"Passkey prompts need a byte-level or tokenized model; {label} has a task vocabulary of "
                f"{cfg.vocab_size} ids. Open a passkey organism (passkey-mamba-n4 / -n16) or a text model.")
    else:
        st.caption("Greedy retrieval of a 5-digit key hidden in filler, over context lengths × needle depths "
                   "(in the passkey organisms' own format).")
        defaults = [x for x in (L, 2 * L, 4 * L) if x in LENGTH_OPTIONS] or [128]
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        lengths = widget("multiselect", "Lengths", LENGTH_OPTIONS, key="states_pk_lengths", default=defaults,
                         options=LENGTH_OPTIONS, where=c1)
        depths = widget("multiselect", "Depths", DEPTH_OPTIONS, key="states_pk_depths", default=[0.0, 0.5, 1.0],
                        options=DEPTH_OPTIONS, where=c2)
        trials = int(widget("number_input", "Trials per cell", min_value=1, max_value=64, step=1,
                            key="states_pk_trials", default=2, where=c3))
        from seqlens.probes.capacity import SWEEP_MEASURES

        measure = widget("selectbox", "Measure", list(SWEEP_MEASURES), key="states_pk_measure", default="exact",
                         options=list(SWEEP_MEASURES), where=c4)
        run_pk = st.button("Run passkey sweep", type="primary", key="states_pk_run", disabled=not (lengths and depths))
        pk_args = (model_key, tuple(sorted(lengths)), tuple(sorted(depths)), trials, measure)
        sweep = computed("passkey", "Passkey sweep", pk_args, run_pk, lambda: analyses.passkey_sweep(*pk_args),
                         "Press **Run passkey sweep** (each cell decodes its trials greedily).") \
            if lengths and depths else None
        if sweep is not None:
            with state.errors_shown("Passkey sweep"):
                c1, c2 = st.columns(2)
                c1.metric("Longest perfect length", "—" if sweep.longest_perfect is None else sweep.longest_perfect,
                          help=f"Every tested length up to it at {sweep.measure} ≥ {sweep.threshold} at every depth.")
                half = sweep.length_at(0.5)
                c2.metric("Length at 50 %", "—" if half is None else f"{half:.0f}",
                          help="Where the depth-averaged accuracy first drops below 0.5 (log-interpolated).")
                result_figure(sweep.figure(height=380), "passkey_figure", sweep, title_chars=90)
                with st.expander("Cells"):
                    st.dataframe(sweep.to_frame(), hide_index=True, width="stretch")

    # ------------------------------------------------------------------------- capacity fit
    st.subheader("Capacity across state sizes")
    from seqlens.app.state import zoo_names

    series = state.passkey_series(zoo_names())  # training length -> organisms differing only in d_state
    if not series:
        st.info("The capacity fit needs at least two passkey organisms of one training length in the zoo.")
    else:
        lengths_trained = sorted(series)
        own = int(task_kwargs(recipe).get("seq_len", 0)) if recipe is not None else 0
        trained_at = widget("selectbox", "Training length", lengths_trained, key="states_fit_series",
                            default=own if own in series else lengths_trained[0], options=lengths_trained,
                            help="One fit per series: organisms trained at the same length, differing only in "
                                 "the state size d_state.") if len(series) > 1 else lengths_trained[0]
        organisms = series[trained_at]
        st.caption(f"Passkey sweeps of {', '.join(organisms)} (trained at length {trained_at}, differing only in "
                   "the state size d_state), then T = a·N + b and log T = c·N + d fitted across them (Stuffed "
                   "Mamba's T_forget / T_max laws).")
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        f_lengths = widget("multiselect", "Lengths", LENGTH_OPTIONS, key="states_fit_lengths", default=FIT_LENGTHS,
                           options=LENGTH_OPTIONS, where=c1)
        f_depths = widget("multiselect", "Depths", DEPTH_OPTIONS, key="states_fit_depths", default=FIT_DEPTHS,
                          options=DEPTH_OPTIONS, where=c2)
        f_trials = int(widget("number_input", "Trials per cell", min_value=1, max_value=64, step=1,
                              key="states_fit_trials", default=2, where=c3))
        from seqlens.probes.capacity import TARGETS

        target = widget("selectbox", "T", list(TARGETS), key="states_fit_target", default=TARGETS[0],
                        options=list(TARGETS), where=c4,
                        help="longest_perfect: T_max; length_at: where accuracy drops below 0.5.")
        run_fit = st.button("Fit across passkey organisms", type="primary", key="states_fit_run",
                            disabled=not (f_lengths and f_depths))
        fit_args = (tuple(organisms), tuple(sorted(f_lengths)), tuple(sorted(f_depths)), f_trials, target)
        sweeps: list = []

        def fitted():
            sweeps[:] = [analyses.passkey_sweep(f"zoo:{name}", *fit_args[1:4]) for name in organisms]
            return analyses.capacity_fit(sweeps, target=target)

        out = computed("fit", "Capacity fit", fit_args, run_fit, fitted,
                       "Press **Fit across passkey organisms** (one sweep per organism, cached).") \
            if f_lengths and f_depths else None
        if sweeps:  # the sweeps, also when the fit itself failed
            for col, name, sweep in zip(st.columns(len(sweeps)), organisms, sweeps):
                col.plotly_chart(sweep.figure(height=300, title_font_size=12), key=f"fit_sweep_{name}")
        if out is not None:
            fit, warns = out
            with state.errors_shown("Capacity fit"):
                for msg in warns:
                    st.warning(msg)
                result_figure(fit.figure(height=420), "capacity_fit", fit, title_chars=90)
                st.dataframe(fit.to_frame(), hide_index=True, width="stretch")
                if fit.exactly_determined:
                    st.caption("Two points for two parameters per fit: R² is undefined (NaN).")

    # ------------------------------------------------------------------------- lag decoding
    st.subheader("Lag decoding")
    tap = "the recurrent state (hook_state)" if model.supports_state_taps else \
        "the residual stream (hook_resid_post): attention has no fixed-size state"
    st.caption(f"A logistic-regression probe per lag k reads the token x(t−k) from {tap} at t; uniform random "
               "tokens over 16 symbols (chance 1/16).")
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
    max_lag = int(widget("number_input", "Largest lag", min_value=1, max_value=64, step=1, key="states_lag_max",
                         default=8, where=c1))
    n_seqs = int(widget("number_input", "Sequences", min_value=8, max_value=1024, step=32, key="states_lag_seqs",
                        default=64, where=c2))
    n_pcs = int(widget("number_input", "State PCs", min_value=8, max_value=4096, step=64, key="states_lag_pcs",
                       default=64, where=c3, help="A state wider than this is projected onto its top principal "
                       "components before the probes (the probes' cost grows with it; 512: the library default)."))
    run_lag = c4.button("Run lag decoding", type="primary", key="states_lag_run",
                        help="One probe per layer and lag, on the state's top principal components.")
    lag_args = (model_key, max_lag, n_seqs, n_pcs)
    curves = st.session_state.setdefault("states_lag_curves", {})  # model label -> last LagCurve
    curve = computed("lag", "Lag decoding", lag_args, run_lag, lambda: analyses.lag_decoding(*lag_args),
                     "Press **Run lag decoding**.")
    if curve is not None:
        with state.errors_shown("Lag decoding"):
            curves[label] = curve
            span = curve.span(0.9)
            st.metric("Span (accuracy ≥ 0.9)", "—" if span is None else f"{span} tokens")
            result_figure(curve.figure(height=380), "lag_figure", curve, title_chars=90,
                          note=f"{curve.settings.get('n_seqs', n_seqs)} sequences: the span is that of this data "
                               "(the docs' numbers use their own settings).")
            if len(curves) > 1:
                from seqlens.probes import lag_curves_figure

                st.plotly_chart(tidy(lag_curves_figure(curves, height=380), 90), key="lag_compare")
                st.caption("Memory curves of every model run in this session.")

# ============================================================================= gates
with tab_gates:
    st.subheader("Gate saturation")
    gate_msg = analyses.gate_problem(model_key)
    if gate_msg is not None:
        st.info(f"Not applicable: {gate_msg}.")
    else:
        st.caption("Fraction of gate values below `low` (left-saturated) and above `high` (right-saturated) "
                   "per layer and gate, on the model's default data (Karpathy et al. 2015, §4.2).")
        c1, c2, c3 = st.columns([2, 2, 1])
        low = widget("slider", "low", 0.0, 0.5, step=0.05, key="states_gate_low", default=0.1, where=c1)
        high = widget("slider", "high", 0.5, 1.0, step=0.05, key="states_gate_high", default=0.9, where=c2)
        run_gates = c3.button("Run gate saturation", type="primary", key="states_gate_run")
        gate_args = (model_key, float(low), float(high))
        sat = computed("gates", "Gate saturation", gate_args, run_gates,
                       lambda: analyses.gate_saturation(*gate_args), "Press **Run gate saturation**.")
        if sat is not None:
            with state.errors_shown("Gate saturation"):
                left, right = st.columns(2)
                with left:
                    result_figure(sat.figure(height=400), "gate_figure", sat)
                with right:
                    result_figure(sat.figure(kind="units", height=400), "gate_units", sat)
                st.dataframe(sat.to_frame(), hide_index=True, width="stretch")
                st.caption(f"{sat.n_tokens} tokens of {sat.settings.get('data', 'the default data')}.")
                for layer, gammas in sat.constants.items():
                    st.caption(f"Layer {layer}: constant decays γ = {', '.join(f'{g:.4f}' for g in gammas)}.")

    # ------------------------------------------------------------------------- interpretable cells
    st.subheader("Interpretable cells")
    if not is_byte_model(model):
        st.info(f"Not applicable: interpretable cells correlate units with byte-level features of Python "
                f"source, so they need a byte-level model; {label} has a vocabulary of {cfg.vocab_size} "
                "tokens. Open a text organism (text-mingru, text-lstm, text-mamba).")
    else:
        st.caption("Pearson correlation of each memory unit with features of a Python source text (in a string, "
                   "in a comment, bracket depth, indentation, column); the text is coloured by the chosen "
                   "unit's activation (red positive, blue negative).")
        STDLIB, OWN = "stdlib validation split", "Your Python code"
        c1, c2, c3 = st.columns([2, 2, 1])
        text_source = widget("radio", "Text", [STDLIB, OWN], key="states_cells_source", default=STDLIB,
                             options=[STDLIB, OWN], where=c1)
        if text_source == STDLIB:
            n_bytes = int(widget("number_input", "Bytes", min_value=256, max_value=8192, step=512,
                                 key="states_cells_bytes", default=2048, where=c2))
            text = n_bytes
        else:
            text = widget("text_area", "Python code", key="states_cells_text", where=c2,
                          default='def f(x):\n    # add one\n    return [x + 1, "done"]\n')
        top_k = int(widget("number_input", "Top cells", min_value=1, max_value=20, step=1, key="states_cells_k",
                           default=5, where=c3))
        run_cells = st.button("Find interpretable cells", type="primary", key="states_cells_run")
        cells_args = (model_key, text, top_k)
        def cells():
            if isinstance(text, str) and len(text.encode()) > MAX_CELL_TEXT:  # activations of every byte are kept
                raise ValueError(f"text: {len(text.encode()):,} bytes; at most {MAX_CELL_TEXT:,} bytes are analysed "
                                 "here (use seqlens.probes.interpretable_cells in Python for longer texts)")
            return analyses.interpretable_cells(*cells_args)

        report = computed("cells", "Interpretable cells", cells_args, run_cells, cells,
                          "Press **Find interpretable cells**.")
        if report is not None:
            with state.errors_shown("Interpretable cells"):
                c1, c2 = st.columns(2)
                feature = widget("selectbox", "Feature", report.features, key="states_cells_feature",
                                 default=report.features[0], options=report.features, where=c1)
                top = report.top(feature, top_k)
                units = [u for u, _ in top]
                corr = dict(top)
                unit = widget("selectbox", "Cell", units, key="states_cells_unit", default=units[0], options=units,
                              where=c2, format_func=lambda u: f"{u} · corr {corr[u]:+.3f}")
                if all(c != c for _, c in top):  # NaN: the feature is constant over this text
                    st.warning(f"{feature} is constant over this text: no unit correlates with it. Pick another "
                               "feature or a longer text.")
                # the heatmap gets the full width: in a third of it the unit labels and colour bar were cut
                result_figure(report.figure(), "cells_figure", report, title_chars=90)
                left, right = st.columns([1, 2])
                with left:
                    st.dataframe([{"rank": i + 1, "unit": u, "corr": c} for i, (u, c) in enumerate(top)],
                                 hide_index=True, width="stretch")
                with right:
                    lo, hi, default = shown_bounds(len(report.tokens))
                    if not lo <= st.session_state.get("states_cells_shown", default) <= hi:
                        st.session_state.pop("states_cells_shown")  # another text's value
                    shown = int(st.number_input("Bytes shown", min_value=lo, max_value=hi, value=default, step=500,
                                                key="states_cells_shown"))
                    # the top unit of a feature is shown with its correlation; another one by name
                    # the coloured text wraps and scrolls inside its column (long lines overflowed it)
                    # (the report's <pre> keeps white-space: pre unless told, so the rule targets it too)
                    st.html('<style>.cells-text pre{white-space:pre-wrap;overflow-wrap:anywhere}</style>'
                            '<div class="cells-text" style="max-width:100%;max-height:520px;overflow:auto;'
                            f'overflow-wrap:anywhere;white-space:pre-wrap">'
                            f'{report.html(feature if unit == units[0] else unit, max_bytes=shown)}</div>')
