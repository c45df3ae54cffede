"""Attribution page: the relevance of every prompt token for one logit (``circuits.lrp.attribute``:
the architecture's LRP rule set or a baseline), per layer (hooks), its conservation, and the
token-flipping faithfulness curves of the current model (``circuits.lrp.token_flipping``)."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.prompt import prompt_input, token_labels
from seqlens.app.show import method_line, result_figure
from seqlens.circuits.lrp import BASELINES

PREDICTION = "The model's prediction"
TASK, PROMPT = "Task data", "This prompt"

model_key, model = state.current_model()
st.title("Attribution")
method_line("Which prompt tokens the explained logit rests on: each token's relevance, by layer-wise relevance "
            "propagation (docs/lrp.md). 'auto' is the architecture's own rule set (AttnLRP, MambaLRP, gate-aware "
            "LRP); the baselines are gradient × input, integrated gradients, SmoothGrad and (implicit) attention "
            "rollout. Below: token flipping, how faithful each method's ranking is.", "§6 (relevance), §7 (rollout)")

prompt = prompt_input(model_key, model)
if prompt is None:
    st.stop()

# ----------------------------------------------------------------------------- method and target
methods = ["auto"] + (["attnlrp", "cp-lrp"] if model.is_softmax else []) + list(BASELINES)
c1, c2, c3 = st.columns([1, 1, 1])
method = c1.selectbox("Method", methods, key=state.persistent("lrp_method", "auto", methods))
state.remember("lrp_method", method)
kinds = [PREDICTION, "Token id"]
kind = c2.radio("Target", kinds, key=state.persistent("lrp_target_kind", PREDICTION, kinds))
state.remember("lrp_target_kind", kind)
target = None
if kind != PREDICTION:
    target = int(c3.number_input(f"Target token id (0–{model.cfg.vocab_size - 1})", min_value=0,
                                 max_value=model.cfg.vocab_size - 1, step=1, key=state.persistent("lrp_target", 0)))
    state.remember("lrp_target", target)

res = None
with state.errors_shown("Attribution"):
    res = analyses.attribution(model_key, prompt.ids, method, target)
if res is None:
    st.stop()

tgt = int(res.target[0])
st.caption(f"{len(prompt.ids)} tokens ({prompt.source}); rule set that ran: **{res.method}**; explained logit of "
           f"token {tgt} ({token_labels(model, [tgt])[0]!r}) at the last position.")
m1, m2 = st.columns(2)
m1.metric("Explained logit", f"{float(res.logit[0]):.4g}")
m2.metric("Conservation Σ relevance / logit", f"{float(res.conservation[0]):.4g}",
          help="1 for a conservative rule set on a bias-free model; biases, learned positions (kept apart) and "
               "non-conservative baselines move it away from 1. Not meaningful for rollout (rows sum to 1).")
st.markdown("**Tokens by relevance** (red positive, blue negative; hover for the value)")
st.html(f"<div style=\"overflow-wrap: anywhere; word-break: break-all\">{res.html()}</div>")  # unspaced task tokens wrap
result_figure(res.figure(), "lrp_figure", res, title_chars=90)
if res.hooks:
    result_figure(res.hooks_figure(), "lrp_hooks_figure", title_chars=90)  # settings and downloads: above
else:
    st.info(f"Per-layer relevance is recorded for the LRP rule sets and gxi, not {res.method}.")

# ----------------------------------------------------------------------------- token flipping
st.subheader("Token flipping")
st.caption("Replace (by token 0) the tokens each method ranks most (MoRF) or least (LeRF) relevant for the "
           "prediction at the last position and follow that token's logit; ΔA^F = AUC_LeRF − AUC_MoRF, larger is "
           "more faithful. Runs on request.")
sources = ([TASK] if model.recipe is not None else []) + [PROMPT]
f1, f2, f3 = st.columns([1, 2, 1])
source = f1.radio("Data", sources, key=state.persistent("lrp_flip_source", sources[0], sources))
state.remember("lrp_flip_source", source)
choices = methods + ["random"]
chosen = f2.multiselect("Methods", choices, key=state.persistent("lrp_flip_methods", ["auto", "gxi", "random"], choices))
state.remember("lrp_flip_methods", chosen)
steps = int(f3.number_input("Steps", min_value=1, max_value=50, step=1, key=state.persistent("lrp_flip_steps", 4)))
state.remember("lrp_flip_steps", steps)
n_rows = 1
if source == TASK:
    n_rows = int(f1.number_input("Sequences", min_value=1, max_value=64, step=1,
                                 key=state.persistent("lrp_flip_rows", 2)))
    state.remember("lrp_flip_rows", n_rows)

flips = st.session_state.setdefault("lrp_flips", {})  # (model, data, methods, steps) -> FlippingCurves
run_key = (model_key, source, prompt.ids if source == PROMPT else n_rows, tuple(chosen), steps)
if st.button("Run token flipping", type="primary", key="lrp_flip_run", disabled=not chosen):
    with state.errors_shown("Token flipping"):
        data = ("tokens", prompt.ids) if source == PROMPT else ("task", n_rows)
        rows = analyses.finder_tokens(model_key, data)
        flips[run_key] = analyses.token_flipping(model_key, rows, tuple(chosen), steps)
curves = flips.get(run_key)
if curves is None:
    st.info("Press **Run token flipping** to draw the MoRF / LeRF curves of the chosen methods.")
else:
    result_figure(curves.figure(), "lrp_flip_figure", curves, title_chars=90,
                  note=f"{curves.n_sequences} sequence(s); ΔA^F: "
                       + ", ".join(f"{m} {v:.3g}" for m, v in curves.delta_af.items()) + ".")
