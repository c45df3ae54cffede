"""Sinks page: attention-sink mass per head, hidden sinks (ACT's r(j) > τ beyond token 0), and the
model before / after ACT attention calibration of chosen heads."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.prompt import prompt_input, task_rows, token_labels
from seqlens.app.show import method_line, result_figure
from seqlens.circuits import sinks as sinks_lib

TASK, PROMPT = "Task data", "Prompt"
N_TASK_ROWS = 8

model_key, model = state.current_model()
cfg = model.cfg
recipe = model.recipe
st.title("Attention sinks")
method_line("Left: the attention mass each head puts on the first token (an attention sink, StreamingLLM); "
            "right: the table, with the first-k mass and later 'hidden' sinks (ACT, Yu et al. 2024). Recurrent "
            "models are scored on their implicit attention. Below: ACT calibration of chosen heads, on request.",
            "§4 (sinks, ACT), §7 (implicit attention)")

# ----------------------------------------------------------------------------- data
sources = ([TASK] if recipe is not None else []) + [PROMPT]
source = st.radio("Data", sources, horizontal=True, key=state.persistent("sinks_source", sources[0], sources),
                  help=f"Task data: the first {N_TASK_ROWS} evaluation sequences of the organism's task. "
                       "Prompt: the prompt of the Attention page.")
state.remember("sinks_source", source)
rows = None
if source == TASK:
    with state.errors_shown("Task data"):
        rows = analyses.finder_tokens(model_key, ("task", min(N_TASK_ROWS, task_rows(model_key))))
    if rows is None:
        st.stop()
else:
    prompt = prompt_input(model_key, model)
    if prompt is None:
        st.stop()
    rows = (prompt.ids,)

# ----------------------------------------------------------------------------- sink scores
res = None
with state.errors_shown("Sink scores"):
    res = analyses.sink_scores(model_key, rows)
if res is None:
    st.stop()

left, right = st.columns([1, 1])
with left:
    fig = res.figure(height=380)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1)
    result_figure(fig, "sink_figure", res, note=f"{len(rows)} sequence(s) of {len(rows[0])} tokens.")
with right:
    frame = res.to_frame()
    frame.insert(0, "head_id", [f"L{l}H{h}" for l, h in zip(frame["layer"], frame["head"])])
    st.dataframe(frame.drop(columns=["layer", "head"]).rename(columns={"score": "mass on token 0"}),
                 hide_index=True, width="stretch", height=min(380, 38 + 35 * len(frame)))  # no empty row

heads = [f"L{l}H{h}" for l in range(res.n_layers) for h in range(res.n_heads)]
top = [f"L{l}H{h}" for (l, h), _ in res.top(res.n_layers * res.n_heads)]
if res.received is not None:
    st.subheader("Attention received r(j)")
    pick = st.selectbox("Head", top, key=state.persistent("sinks_head", top[0], top),
                        help="Heads ordered by mass on token 0.")
    state.remember("sinks_head", pick)
    l, h = (int(x) for x in pick[1:].split("H"))
    result_figure(res.received_figure(l, h, height=340), "received_figure", res, title_chars=90)

# ----------------------------------------------------------------------------- ACT calibration
st.subheader("ACT calibration: before / after")
if not model.is_softmax:
    st.info(f"ACT calibration rescales softmax attention rows; {cfg.arch} has implicit attention only, "
            "so there is nothing to calibrate. Open an attention model (transformer / FoX).")
    st.stop()

parse = lambda label: tuple(int(x) for x in label[1:].split("H"))  # noqa: E731

if recipe is not None:
    with st.expander("Search heads to calibrate (ACT's offline search, one head at a time)"):
        st.caption("Calibrates each head alone and keeps those that improve the organism's task metric.")
        c1, c2 = st.columns(2)
        s_tau = c1.number_input("τ (search)", 0.01, 1.0, 0.1, 0.01, key="sinks_search_tau")
        s_beta = c2.number_input("β (search)", 0.0, 1.0, 0.4, 0.05, key="sinks_search_beta")
        if st.button("Run head search", key="sinks_search"):
            progress = analyses.progress_callback("ACT head search")  # one step per head
            with state.errors_shown("ACT head search"):
                found = sinks_lib.search_calibration_heads(model, tau=s_tau, beta=s_beta, exclude_layers=(),
                                                           progress=progress)
                progress.bar.progress(1.0, text="ACT head search done")
                st.session_state["sinks_search_result"] = (model_key, found)
                kept = [f"L{l}H{h}" for l, h in found.kept]
                if kept:  # becomes the heads to calibrate below
                    st.session_state["sinks_calib_heads"] = kept
                    st.session_state.pop("w_sinks_calib_heads", None)
        stored = st.session_state.get("sinks_search_result")
        if stored is not None and stored[0] == model_key:
            result_figure(stored[1].figure(height=340), "search_figure", stored[1], title_chars=90)

# default: the heads with the most hidden sinks (what ACT recalibrates), else the strongest sinks
hidden = res.hidden_sinks or [[[] for _ in range(res.n_heads)] for _ in range(res.n_layers)]
with_hidden = sorted((f"L{l}H{h}" for l in range(res.n_layers) for h in range(res.n_heads) if hidden[l][h]),
                     key=lambda lab: -len(hidden[parse(lab)[0]][parse(lab)[1]]))
default_heads = with_hidden[:2] or top[:2]
c1, c2, c3 = st.columns([2, 1, 1])
chosen = c1.multiselect("Heads to calibrate", heads, key=state.persistent("sinks_calib_heads", default_heads, heads),
                        help="Default: the heads with the most hidden sinks (r(j) > τ for j > 0).")
state.remember("sinks_calib_heads", chosen)
tau = c2.slider("τ (sink threshold on r(j))", 0.01, 0.5, step=0.01, key=state.persistent("sinks_tau", 0.1))
state.remember("sinks_tau", tau)
beta = c3.slider("β (kept share of sink attention)", 0.0, 1.0, step=0.05, key=state.persistent("sinks_beta", 0.4))
state.remember("sinks_beta", beta)
if not chosen:
    st.info("Pick heads to calibrate.")
    st.stop()
pairs = tuple(sorted(parse(c) for c in chosen))
calib_key = (model_key, rows, pairs, float(tau), float(beta))
if st.button("Run calibration", type="primary", key="sinks_calib_run",
             help="Evaluates the task metric twice and recomputes the chosen heads' patterns (cached)."):
    st.session_state["sinks_calib_ran"] = calib_key
if st.session_state.get("sinks_calib_ran") != calib_key:
    st.info("Press **Run calibration** to compare the model before / after calibrating these heads.")
    st.stop()

if recipe is not None:
    with state.errors_shown("Task metric"):
        m = analyses.calibration_metric(model_key, pairs, float(tau), float(beta))  # a CalibrationMetric
        c1, c2 = st.columns(2)
        c1.metric(f"{m.metric} before", f"{m.before:.4f}")
        c2.metric(f"{m.metric} after calibrating {len(pairs)} heads", f"{m.after:.4f}",
                  delta=f"{m.after - m.before:+.4f}", delta_color="normal" if m.higher_is_better else "inverse")

with state.errors_shown("Calibration"):
    ids = rows[0]
    labels = token_labels(model, ids)
    calib = analyses.calibration(model_key, tuple(ids), pairs, float(tau), float(beta), tuple(labels))
    show = st.selectbox("Calibrated head", [f"L{l}H{h}" for l, h in pairs], key="sinks_show_head")
    head = parse(show)
    st.caption(f"{show} on the first sequence ({len(ids)} tokens); sinks ACT found (j > 0, r(j) > τ): "
               f"{calib.sinks[calib.index(head)] or 'none'}.")
    left, right = st.columns([3, 2])
    with left:
        result_figure(calib.figure(head), "calib_patterns", calib, title_chars=60)
    with right:
        result_figure(calib.received_figure(head), "calib_received", calib, title_chars=40)
