"""Compare page: one analysis run on several zoo organisms of different architectures, side by
side on shared axes (``app/compare.py`` draws them from the library's Results)."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.compare import ANALYSES, DEFAULT_ORGANISMS, FIGURES
from seqlens.app.show import downloads, method_line
from seqlens.circuits import FINDERS

SECTIONS = {"finder": "§1", "pattern": "§7", "collapse": "§5", "gates": "§5", "relevance": "§6"}
N_ROWS = 8  # task sequences each organism's finder scores are computed on
COLLAPSE_TOKENS = 2048

st.title("Compare architectures")
method_line("The same analysis on several organisms, one panel (or line) each, on one colour scale or one "
            "pair of axes. The MQAR organisms share one task and vocabulary, so they see the very same data.",
            "§1, §5, §6, §7")

names = state.zoo_names()
defaults = [n for n in DEFAULT_ORGANISMS if n in names] or names[:4]
c1, c2 = st.columns([3, 2])
chosen = c1.multiselect("Organisms", names, key=state.persistent("compare_models", defaults, names),
                        help="Zoo organisms; pick several architectures (the MQAR five by default).")
state.remember("compare_models", chosen)
what = c2.selectbox("Analysis", list(ANALYSES), format_func=ANALYSES.get,
                    key=state.persistent("compare_what", "finder", list(ANALYSES)))
state.remember("compare_what", what)

settings: tuple = ()
if what == "finder":
    finder = st.selectbox("Finder", list(FINDERS), key=state.persistent("compare_finder", "induction", list(FINDERS)))
    state.remember("compare_finder", finder)
    settings = (finder,)
elif what in ("pattern", "relevance"):
    st.caption("Prompt: the first evaluation sequence of the first organism's task, the same ids for every "
               "organism (an organism whose vocabulary does not hold them says so)."
               + (" Layer: each organism's last." if what == "pattern" else " Method: each architecture's "
                  "rule set (`auto`)."))
elif what == "collapse":
    st.caption(f"Each organism's own task stream, {COLLAPSE_TOKENS} tokens, carried in chunks (its state or "
               "KV cache); the loss per position bucket on log positions.")
if not chosen:
    st.info("Pick organisms to compare.")
    st.stop()

run_key = (tuple(chosen), what, settings)
if st.button("Compare", type="primary", key="compare_run"):
    st.session_state["compare_ran"] = run_key
if st.session_state.get("compare_ran") != run_key:
    st.info(f"Press **Compare** to run {ANALYSES[what].lower()} on {len(chosen)} organisms.")
    st.stop()


def shared_prompt() -> tuple[int, ...]:
    rows = analyses.finder_tokens(f"zoo:{chosen[0]}", ("task", 1))
    return rows[0]


def one(name: str):
    key = f"zoo:{name}"
    if what == "finder":
        return analyses.finder_scores(key, settings[0], ("task", N_ROWS))[0]
    if what == "pattern":
        layer = state.load_model(key).cfg.n_layers - 1
        return analyses.patterns(key, shared_prompt(), layer, "auto")
    if what == "collapse":
        return analyses.state_collapse(key, "task", COLLAPSE_TOKENS)[0]
    if what == "gates":
        problem = analyses.gate_problem(key)
        if problem is not None:
            raise ValueError(f"not applicable: {problem}")
        return analyses.gate_saturation(key)
    return analyses.attribution(key, shared_prompt(), "auto")


results, problems = {}, {}
bar = analyses.progress_callback(f"{ANALYSES[what]} on {len(chosen)} organisms", "organisms")
for i, name in enumerate(chosen):
    try:
        results[name] = one(name)
    except Exception as e:  # noqa: BLE001 — one organism's failure must not hide the others
        problems[name] = state.error_text(e)
    bar(i + 1, len(chosen))
for name, msg in problems.items():
    st.warning(f"{name}: {msg}")
if not results:
    st.stop()

arch = {n: state.load_model(f"zoo:{n}").cfg.arch for n in results}
st.caption("Architectures: " + ", ".join(f"{n} ({a})" for n, a in arch.items())
           + f" — {len(set(arch.values()))} different.")
fig = FIGURES[what](results)
st.plotly_chart(fig, key="compare_figure",
                config={"toImageButtonOptions": {"format": "png", "filename": f"compare-{what}"}, "displaylogo": False})
first = next(iter(results.values()))
st.caption(f"Computed on ({next(iter(results))}; the others alike): "
           + "; ".join(f"{k} = {v}" for k, v in first.settings.items()
                       if k in ("data", "batch", "seq_len", "measure", "normalisation", "layer", "source",
                                "n_tokens", "method", "pattern", "low", "high"))
           + f". Method: docs/methods.md {SECTIONS[what]}.")
downloads(f"compare-{what}", fig, None)
