"""Heads page: score heatmaps of every registered head finder (``circuits.FINDERS``), a selected
head's pattern, and the causal check of a head set (ablated vs random heads)."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.hover import token_hover_html
from seqlens.app.prompt import prompt_input
from seqlens.app.show import method_line, result_figure
from seqlens.circuits import FINDERS, ablation

TASK, DEFAULT, PROMPT = "Task data", "Finder defaults", "Prompt"

model_key, model = state.current_model()
recipe = model.recipe
st.title("Heads")
method_line("One heatmap per head finder: how strongly each (layer, head) shows that family's pattern in the "
            "model's (implicit) attention on the data named under it; recurrent models' heads are the mixer's "
            "channel groups. Below: a head's pattern and a causal check (ablate it, compare with random heads).",
            "§1-§4 (finders), §7 (implicit attention), §2 (causal check)")

# ----------------------------------------------------------------------------- data and finders
sources = ([TASK] if recipe is not None else []) + [DEFAULT, PROMPT]
c1, c2 = st.columns([1, 2])
source = c1.radio("Data", sources, key=state.persistent("heads_source", sources[0], sources),
                  help="Task data: the organism's own evaluation sequences. Finder defaults: each finder's own "
                       "data (e.g. repeated random tokens). Prompt: the prompt of the Attention page.")
state.remember("heads_source", source)
names = list(FINDERS)
chosen = c2.multiselect("Finders", names, key=state.persistent("heads_finders", names, names),
                        help="Every finder registered in seqlens.circuits.FINDERS.")
state.remember("heads_finders", chosen)

rows_shown = None  # token rows whose first sequence the head pattern is drawn on
if source == TASK:
    n_rows = None
    with state.errors_shown("Task data"):
        from seqlens.app.prompt import task_rows

        n_rows = task_rows(model_key)
    if n_rows is None:
        st.stop()
    n = c1.number_input("Sequences", min_value=1, max_value=n_rows, step=1,
                        key=state.persistent("heads_n_rows", min(8, n_rows)))
    state.remember("heads_n_rows", n)
    data = ("task", int(n))
elif source == PROMPT:
    prompt = prompt_input(model_key, model)
    if prompt is None:
        st.stop()
    data = ("tokens", prompt.ids)
else:
    data = ("default",)

if not chosen:
    st.info("Pick at least one finder.")
    st.stop()

# Finders run on request: some are slow (implicit attention of recurrent models on CPU, retrieval's
# decoding), so the page keeps each (model, data)'s outcomes in the session and reruns only on a click.
runs = st.session_state.setdefault("finder_runs", {})  # (model key, data) -> {finder: outcome}
done = runs.setdefault((model_key, data), {})
if st.button("Run finders", type="primary", key="heads_run",
             help="Results are cached: finders already run on this model and data return at once."):
    bar = st.progress(0.0, text="Running finders ...")
    # a click reruns the page, which interrupts this loop at its next st call; finished finders stay in `done`
    stop = st.empty()
    stop.button("Stop", key="heads_stop", icon=":material/stop:", help="Stop after the running finder; the "
                "finders done so far are kept (press Run finders to run the rest).")
    with analyses.shared_patterns(model):  # each layer's (implicit) attention once for all finders
        for i, name in enumerate(chosen):
            bar.progress(i / len(chosen), text=f"Running {name} ({i + 1}/{len(chosen)}) ...")
            if done.get(name, ("",))[0] == "ok":  # already run on this data (a stopped run kept it)
                continue
            try:
                res, warns = analyses.finder_scores(model_key, name, data)
                done[name] = ("ok", res, warns)
            except Exception as e:  # noqa: BLE001 — one failing finder must not hide the others
                done[name] = ("error", state.error_text(e), [])
    stop.empty()
    bar.progress(1.0, text=f"{sum(done[n][0] == 'ok' for n in chosen)} of {len(chosen)} finders done")

results = {n: done[n][1] for n in chosen if n in done and done[n][0] == "ok"}
warned = {n: done[n][2] for n in results}
failed = {n: done[n][1] for n in chosen if n in done and done[n][0] == "error"}
pending = [n for n in chosen if n not in done]
if pending:
    st.info(("Press **Run finders** to score every head with: " if len(pending) == len(chosen) else
             "Not run yet on this data (press **Run finders**): ") + ", ".join(pending) + ".")

for name, msg in failed.items():
    st.error(f"Finder {name}: {msg}")

cols = st.columns(2)
for k, (name, res) in enumerate(results.items()):
    with cols[k % 2]:
        fig = res.figure(height=320, margin={"l": 40, "r": 10, "t": 50, "b": 40})
        fig.update_xaxes(dtick=1)
        fig.update_yaxes(dtick=1)
        result_figure(fig, f"finder_{name}", res)
        for msg in dict.fromkeys(warned.get(name, [])):
            st.warning(f"{name}: {msg}")
        st.caption("top: " + ", ".join(f"L{l}H{h} {v:.3f}" for (l, h), v in res.top(3)))

# ----------------------------------------------------------------------------- one head's pattern
head_label = None
if results:
    st.subheader("Head pattern")
    c1, c2 = st.columns(2)
    by = c1.selectbox("Rank heads by", list(results), key=state.persistent("heads_rank_by", list(results)[0],
                                                                           list(results)))
    state.remember("heads_rank_by", by)
    ranked = results[by].top(results[by].n_layers * results[by].n_heads)
    options = [f"L{l}H{h}" for (l, h), _ in ranked]
    score_of = {f"L{l}H{h}": v for (l, h), v in ranked}
    head_label = c2.selectbox("Head", options, format_func=lambda o: f"{o} · {by} {score_of[o]:.3f}",
                              key=state.persistent("heads_head", options[0], options))
    state.remember("heads_head", head_label)
    layer, head = (int(x) for x in head_label[1:].split("H"))

    with state.errors_shown("Head pattern"):
        from seqlens.app.prompt import token_labels

        rows = analyses.finder_tokens(model_key, data)
        ids = rows[0] if rows is not None else analyses.default_data_row(model, results[by])
        labels = token_labels(model, ids)
        res = analyses.patterns(model_key, tuple(ids), layer, "auto", tuple(labels))
        pat = res.patterns[head].numpy()
        where = "the first data sequence" if rows is not None else "a sequence of the finder's default data"
        st.caption(f"{head_label} on {where} ({len(ids)} tokens).")
        left, right = st.columns([1, 1])
        with left:
            result_figure(res.figure(heads=[head], cols=1, height_per_row=460, title=""), "head_pattern", res)
        with right:
            st.iframe(token_hover_html(pat[None], labels, [head_label], caption=f"{head_label} · hover a token"))

# ----------------------------------------------------------------------------- causal check
st.subheader("Causal check")
st.caption("The organism's own task metric with the chosen heads ablated, against as many random heads "
           "(Wu et al. 2024: top-K vs K random).")

all_heads = [f"L{l}H{h}" for l, h in ablation.all_heads(model)]
if head_label is not None and st.session_state.get("causal_follows") != (model_key, head_label):
    # a newly selected head becomes the head set to check (the user may add others)
    st.session_state["causal_follows"] = (model_key, head_label)
    st.session_state["causal_heads"] = [head_label]
    st.session_state.pop("w_causal_heads", None)
c1, c2, c3 = st.columns([2, 1, 1])
targets = c1.multiselect("Heads to ablate", all_heads,
                         key=state.persistent("causal_heads", [head_label or all_heads[0]], all_heads))
state.remember("causal_heads", targets)
n_random = c2.number_input("Random draws", min_value=0, max_value=50, step=1, key=state.persistent("causal_n", 5))
state.remember("causal_n", n_random)
mode = c3.selectbox("Ablation", list(ablation.MODES), key=state.persistent("causal_mode", "zero",
                                                                          list(ablation.MODES)))
state.remember("causal_mode", mode)
if recipe is None:
    st.info("Causal checks measure a zoo organism's own task metric; this model has no training recipe, "
            "so they are disabled. Open a zoo organism to run one.")
run = st.button("Run causal check", disabled=recipe is None or not targets, type="primary")

check_key = (model_key, tuple(targets), int(n_random), mode)
if run:
    pairs = [tuple(int(x) for x in t[1:].split("H")) for t in targets]
    progress = analyses.progress_callback("Causal check")  # baseline, target heads, random draws
    with state.errors_shown("Causal check"):
        res = ablation.causal_check(model, pairs, n_random=int(n_random), mode=mode, progress=progress)
        st.session_state["causal_result"] = (check_key, res)

stored = st.session_state.get("causal_result")
if stored is not None and stored[0] == check_key:
    res = stored[1]
    m1, m2, m3 = st.columns(3)
    m1.metric(f"Baseline {res.metric}", f"{res.baseline:.4f}",
              help="higher is better" if res.higher_is_better else "lower is better")
    n_target = len(res.heads)
    m2.metric(f"Drop, {n_target} target head{'s' if n_target != 1 else ''} ablated", f"{res.drop:+.4f}",
              help="How much worse the metric gets (positive = the ablation hurt).")
    m3.metric(f"Drop, random heads (mean ± std, n={len(res.random)})",
              f"{res.random_drop_mean:+.4f} ± {res.random_drop_std:.4f}" if res.random else "—")
    possible = res.settings.get("distinct_sets")
    if possible is not None and possible <= len(res.random):
        st.caption(f"Only {possible} distinct random head set{'s' if possible != 1 else ''} of {n_target} exist "
                   f"among the other heads: each was ablated once.")
    result_figure(res.figure(height=400), "causal_figure", res)
    st.dataframe(res.to_frame(), hide_index=True, width="stretch")
