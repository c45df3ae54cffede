"""One thin Streamlit page per analysis, run by ``st.navigation`` from ``app/main.py`` (as scripts,
not imported)."""
