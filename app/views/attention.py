"""Attention page: per layer / head patterns of a prompt (softmax attention, or the implicit
attention of recurrent mixers), as heatmaps and as a hover-the-tokens view."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.hover import token_hover_html
from seqlens.app.prompt import prompt_input
from seqlens.app.show import method_line, result_figure

HOVER_MAX_VALUES = 300_000  # all heads go into the hover view up to H·L² values, else the chosen head

model_key, model = state.current_model()
cfg = model.cfg
st.title("Attention")
method_line("How much each token (row: query) draws on each earlier token (column: key) in one layer: softmax "
            "attention for attention models; for recurrent models (Mamba, GLA, minGRU, LSTM) the implicit "
            "attention of the mixer, per head or channel group. Hover a token in the token view.", "§7")

prompt = prompt_input(model_key, model)
if prompt is None:
    st.stop()

controls = st.columns([1, 1, 2])
layer = controls[0].selectbox("Layer", list(range(cfg.n_layers)), key=state.persistent("attn_layer", 0,
                              list(range(cfg.n_layers))))
state.remember("attn_layer", layer)
normalisation = "none"
if not model.is_softmax:
    norm_rows = controls[1].toggle("|α| / row sum", value=True, key="attn_norm",
                                   help="Implicit attention is signed and its rows do not sum to 1; this shows "
                                        "|α_ts| / Σ_s |α_ts| (what the head finders score). Off: the raw signed α.")
    normalisation = "abs_rows" if norm_rows else "none"

with state.errors_shown("Attention patterns"):
    res = analyses.patterns(model_key, prompt.ids, layer, normalisation, prompt.labels)  # a Patterns Result
    pats = res.patterns.numpy()  # [H, L, L]
    H, L = res.n_heads, len(res.tokens)
    kind = "implicit attention" if res.implicit else "attention"
    st.caption(f"{L} tokens ({prompt.source}); layer {layer}: {H} {'channel groups' if model.blocks[0].mixer.groups.unit == 'channel' else 'heads'}.")
    head_names = res.head_names()

    # lazy tabs: only the open one is drawn (the heatmaps of every head cost seconds on long prompts)
    tab_hover, tab_grid = st.tabs(["Token view", "Heatmaps"], key="attn_view", on_change="rerun")
    with tab_hover:
        if tab_hover.open:
            if H * L * L <= HOVER_MAX_VALUES:
                shown, names = pats, head_names
            else:
                h = st.selectbox("Head", list(range(H)), format_func=lambda i: head_names[i], key="attn_hover_head")
                shown, names = pats[h:h + 1], head_names[h:h + 1]
            st.iframe(token_hover_html(shown, prompt.labels, names,
                                       caption=f"{model_key.partition(':')[2]} · layer {layer} · {kind}"))
    with tab_grid:
        if tab_grid.open:
            result_figure(res.figure(cols=2), "attn_grid", res, title_chars=90)
            if res.signed:
                st.caption("Raw implicit attention: signed weights (red/blue), rows need not sum to 1.")
