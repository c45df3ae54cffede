"""Model page: what the open model is (architecture, parameters, training metric) and its hooks."""

import pandas as pd
import streamlit as st

from seqlens.models.summary import arch_summary
from seqlens.app import analyses, state
from seqlens.app.show import method_line

# the field names ("data kwargs", "recorded ...") were cut at the default column width
FIELD_COLUMNS = {"field": st.column_config.TextColumn("field", width="medium"),
                 "value": st.column_config.TextColumn("value", width="large")}

model_key, model = state.current_model()
cfg = model.cfg
summary = arch_summary(model)
recipe = model.recipe
metrics = model.metrics or {}

st.title(f"Model: {state.model_label(model_key)}")
if model_key.startswith("zoo:"):
    from seqlens.models import zoo

    st.caption(zoo.describe(model_key[4:]))
else:
    st.caption(f"Local checkpoint {model_key[4:]}")

method_line("What the open model is: its architecture and size, how it was trained (zoo organisms: the "
            "recipe and the metric recorded after training), and every hook point an analysis can read, with "
            "its shape. Every other page works on this model (the sidebar switches it).", "§7 (mixers), docs/hooks.md")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Architecture", cfg.arch, help="softmax attention" if model.is_softmax else "recurrent: a fixed-size state")
c2.metric("Parameters", f"{summary['parameters']:,}")
c3.metric("Layers × heads", f"{cfg.n_layers} × {model.n_groups}")
if recipe is not None and recipe.metric in metrics:
    c4.metric(f"Training metric: {recipe.metric}", f"{metrics[recipe.metric]:.3f}")
else:
    c4.metric("Training metric", "—", help="Only zoo organisms record a training metric.")

left, right = st.columns([1, 1])
with left:
    st.subheader("Configuration")
    st.dataframe(pd.DataFrame({"field": list(summary), "value": [str(v) for v in summary.values()]}),
                 hide_index=True, width="stretch", column_config=FIELD_COLUMNS)
with right:
    st.subheader("Training")
    if recipe is None:
        st.info("No training recipe: this is an untrained preset or an external checkpoint.")
    else:
        # one row per data argument: the whole dict in one cell was cut at the column's width
        rows = {"task / data": recipe.data, **{f"data: {k}": str(v) for k, v in (recipe.data_kwargs or {}).items()},
                "steps": recipe.steps, "batch size": recipe.batch_size, "seed": recipe.seed, "metric": recipe.metric}
        rows.update({f"recorded {k}": f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in metrics.items()})
        st.dataframe(pd.DataFrame({"field": list(rows), "value": [str(v) for v in rows.values()]}),
                     hide_index=True, width="stretch", column_config=FIELD_COLUMNS)
        if recipe.description and not model_key.startswith("zoo:"):  # zoo models show it under the title
            st.caption(recipe.description)
    tok = model.tokenizer
    st.caption("Tokenizer: " + (type(tok).__name__ if tok is not None else
                                 "none (byte-level)" if cfg.vocab_size == 256 else
                                 f"none (task vocabulary of {cfg.vocab_size} ids)"))

st.subheader("Hook points")
with state.errors_shown("Hook table"):
    fired, silent, taps = analyses.hook_table(model_key)
    st.caption(f"{len(fired)} hooks fired on a random input of 8 tokens, in execution order"
               + (f" (state taps at {taps})" if taps else "") + ". The same names work on every architecture.")
    st.dataframe(pd.DataFrame({"hook": [n for n, _ in fired], "shape": [str(s) for _, s in fired]}),
                 hide_index=True, width="stretch", height=min(600, 36 + 35 * len(fired)))
    if silent:
        st.caption("Declared but not fired on this input: " + ", ".join(silent))

if model_key.startswith("zoo:") and st.toggle("Show the whole zoo", key="model_show_zoo"):
    with state.errors_shown("Zoo table"):
        st.dataframe(pd.DataFrame(analyses.zoo_table()), hide_index=True, width="stretch")
