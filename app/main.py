"""seqlens dashboard: ``seqlens app`` or ``streamlit run app/main.py``.

Routes with ``st.navigation`` to one thin view per analysis (``views/``); the sidebar holds the
model choice, shared by every page through ``st.session_state``. Each page is addressable by URL
(``/``, ``/attention``, ``/heads``, ``/sinks``, ``/states``, ``/features``, ``/compare``, ``/studies``).
"""

from pathlib import Path

import streamlit as st

from seqlens.app import state

HERE = Path(__file__).parent

st.set_page_config(page_title="seqlens", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page(HERE / "views" / "model.py", title="Model", icon=":material/memory:", url_path="model", default=True),
    st.Page(HERE / "views" / "attention.py", title="Attention", icon=":material/visibility:", url_path="attention"),
    st.Page(HERE / "views" / "heads.py", title="Heads", icon=":material/target:", url_path="heads"),
    st.Page(HERE / "views" / "sinks.py", title="Sinks", icon=":material/vertical_align_bottom:", url_path="sinks"),
    st.Page(HERE / "views" / "states.py", title="States", icon=":material/timeline:", url_path="states"),
    st.Page(HERE / "views" / "attribution.py", title="Attribution", icon=":material/highlight:", url_path="attribution"),
    st.Page(HERE / "views" / "features.py", title="Features", icon=":material/scatter_plot:", url_path="features"),
    st.Page(HERE / "views" / "compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page(HERE / "views" / "studies.py", title="Studies", icon=":material/science:", url_path="studies"),
]

page = st.navigation(PAGES)
state.sidebar_model_picker()
try:
    page.run()
except Exception as e:  # noqa: BLE001 — last resort: a message, never a traceback
    st.error(f"{page.title}: {state.error_text(e)}")
