"""seqlens.app: the Streamlit dashboard (``seqlens app`` / ``streamlit run app/main.py``).

``main.py`` routes with ``st.navigation``; ``views/`` holds one thin page per analysis; the
shared pieces are ``state`` (model choice and loading, error display), ``prompt`` (prompt input,
encoding, token labels) and ``hover`` (the token-hover view); figures come from library Results.
Pages only arrange what library functions return (docs/design.md).
"""

from pathlib import Path

MAIN = Path(__file__).with_name("main.py")  # what `seqlens app` hands to `streamlit run`
