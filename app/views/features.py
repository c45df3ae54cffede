"""Features page: a sparse autoencoder on the current model (a shipped one, or one trained here
with progress), its metrics on held-out stdlib text, and a feature browser (text search over every
feature's top tokens and contexts, sorted by firing frequency or max activation) with each feature's
top contexts, activation histogram and logit effects / state reads. Every number shown is returned
by seqlens.probes.sae (through app/analyses.py)."""

import streamlit as st

from seqlens.app import analyses, state
from seqlens.app.show import downloads, method_line, result_figure, settings_text

model_key, model = state.current_model()
st.title("Features")
method_line("A sparse autoencoder (seqlens.probes.sae) splits one hook's activations into sparse features: its "
            "reconstruction metrics, then a browser of its features (top tokens and contexts, activation histogram, "
            "logit effects). Metrics and features are measured on held-out stdlib text (validation split).",
            "§8 (sparse autoencoders)")

TRAIN_ARCHS = ["topk", "matching_pursuit", "batchtopk", "standard", "jumprelu"]
shipped = []
with state.errors_shown("Shipped SAEs"):
    shipped = analyses.shipped_saes(model_key)
trained = st.session_state.setdefault("features_trained", {})  # model key -> [sae keys trained here]
options = [f"shipped:{n}" for n in shipped] + trained.get(model_key, [])

if not shipped:
    st.info(f"No shipped SAE for {state.model_label(model_key)} (shipped: text-transformer, text-mamba, "
            "text-lstm, text-mingru). Train one below.")

# ----------------------------------------------------------------------------- train one
with st.expander("Train an SAE on this model", expanded=not options):
    hooks = []
    with state.errors_shown("Hooks"):
        hooks = [h for h, _ in analyses.hook_table(model_key)[0]]
    default_hook = next((h for h in hooks if h.endswith("blocks.1.hook_resid_post")),
                        next((h for h in hooks if h.endswith("hook_resid_post")), hooks[0] if hooks else None))
    c1, c2, c3 = st.columns(3)
    hook = c1.selectbox("Hook", hooks, index=hooks.index(default_hook) if default_hook in hooks else 0,
                        key="w_features_hook")
    arch = c1.selectbox("Architecture", TRAIN_ARCHS, key="w_features_arch")
    d_sae = c2.number_input("d_sae", min_value=8, max_value=4096, value=128, step=8, key="w_features_d_sae")
    k = c2.number_input("k", min_value=1, max_value=256, value=8, key="w_features_k")
    steps = c3.number_input("Steps", min_value=1, max_value=5000, value=100, key="w_features_steps")
    n_train = c3.number_input("Training sequences", min_value=1, max_value=512, value=16, key="w_features_n_train")
    if st.button("Train", key="features_train", disabled=hook is None):
        with state.errors_shown("Training"):
            new = analyses.train_feature_sae(model_key, hook, arch, int(d_sae), int(k), int(steps), int(n_train))
            mine = trained.setdefault(model_key, [])
            if new not in mine:
                mine.append(new)
            st.session_state["w_features_sae"] = new
            options = [f"shipped:{n}" for n in shipped] + mine

if not options:
    st.stop()

# ----------------------------------------------------------------------------- the SAE and its metrics
sae_key = st.selectbox("SAE", options, key=state.persistent("features_sae", options[0], options),
                       format_func=lambda o: o.partition(":")[2].replace("|", " · "))
state.remember("features_sae", sae_key)
n_seqs = st.number_input("Held-out sequences", min_value=1, max_value=256,
                         key=state.persistent("features_n_seqs", 16))
state.remember("features_n_seqs", n_seqs)

s = metrics = None
with state.errors_shown("SAE"):
    s = analyses.get_sae(sae_key)
    metrics = analyses.sae_metrics(model_key, sae_key, int(n_seqs))
if s is None or metrics is None:
    st.stop()
meta = s.cfg.metadata
st.caption(f"{s.architecture} SAE on `{meta.get('hook_name')}`: d_in {s.cfg.d_in}, d_sae {s.cfg.d_sae}"
           + (f", k {s.cfg.k}" if getattr(s.cfg, "k", None) else ""))
cols = st.columns(6)
for col, (label, value) in zip(cols, [("FVU", metrics.fvu), ("L0", metrics.l0), ("Dead", metrics.dead_fraction),
                                      ("Cosine", metrics.cosine), ("Dense", metrics.dense_fraction),
                                      ("CE recovered", metrics.ce_recovered)]):
    col.metric(label, "—" if value is None else f"{value:.3f}")
st.caption(f"Computed on: {settings_text(metrics.settings)}." if metrics.settings else "")
downloads("sae_metrics", result=metrics)
if "heldout_metrics" in meta:
    with st.expander("Metrics recorded when it was trained (scripts/train_shipped_saes.py)"):
        st.json(meta["heldout_metrics"])

# ----------------------------------------------------------------------------- feature browser
SORTS = {"frequency, most first": ("frequency", True), "frequency, least first": ("frequency", False),
         "max activation": ("max_activation", True)}
st.subheader("Feature browser")
table = None
with state.errors_shown("Feature table"):
    table = analyses.feature_table(model_key, sae_key, int(n_seqs))
c1, c2 = st.columns([1, 2])
query = c1.text_input("Search top tokens and contexts", key="w_features_search",
                      help="Case-insensitive substring of a feature's top-activating tokens or of the text around "
                           "its largest activation.")
sort = c1.selectbox("Sort by", list(SORTS), key="w_features_sort")
found = live = []
if table is not None:
    found = table.search(query, table.order(*SORTS[sort]))  # the library's table, sorted then filtered
    live = [i for i in found if float(table.frequency[i]) > 0] or found
    c1.caption(f"{len(found)} of {len(table.top_context)} features match; {len(live)} fire on this text.")
    c1.dataframe(table.to_frame(found), hide_index=True, height=360, key="features_table")
    with c1:
        downloads("feature_table", result=table)
    if not live:
        c2.info(f"No feature's top tokens or context contain {query!r}.")
report = None
if live:
    feature = c2.selectbox(f"Feature ({sort})", live, key="w_features_feature")
    with state.errors_shown("Feature report", c2):
        report = analyses.feature_report(model_key, sae_key, int(feature), int(n_seqs))
if report is not None:
    c2.markdown(report.html(), unsafe_allow_html=True)
    result_figure(report.figure(), "features_report", report, title_chars=90)

# ----------------------------------------------------------------------------- side by side
st.subheader("Side by side")
st.caption("The same analysis on two shipped SAEs, e.g. an attention model's residual stream beside a recurrent "
           "model's: held-out metrics and each SAE's most frequent feature.")
all_shipped = []
with state.errors_shown("Shipped SAEs"):
    all_shipped = analyses.all_shipped_saes()
pair_defaults = ["text-transformer/resid-l1", "text-mamba/resid-l1"]
if len(all_shipped) >= 2:
    left, right = st.columns(2)
    picks = [col.selectbox(side, all_shipped, key=f"w_features_cmp_{side.lower()}",
                           index=all_shipped.index(d) if d in all_shipped else i)
             for i, (col, side, d) in enumerate(zip((left, right), ("Left", "Right"), pair_defaults))]
    if st.button("Compare", key="features_compare"):
        for col, name in zip((left, right), picks):
            with state.errors_shown(name, col):
                other_key = f"zoo:{name.split('/', 1)[0]}"
                m = analyses.sae_metrics(other_key, f"shipped:{name}", int(n_seqs))
                col.dataframe(m.to_frame(), hide_index=True)
                top = max(range(len(m.feature_frequency)), key=lambda i: float(m.feature_frequency[i]))
                rep = analyses.feature_report(other_key, f"shipped:{name}", top, int(n_seqs))
                col.markdown(rep.html(), unsafe_allow_html=True)
                with col:
                    result_figure(rep.figure(), f"features_cmp_{name.replace('/', '_')}", rep, title_chars=50)
