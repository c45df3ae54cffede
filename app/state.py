"""Shared app state: which model is open (sidebar, kept in ``st.session_state``), loading it once
per process (``st.cache_resource``), and turning failures into messages instead of tracebacks.

A model is named by a *model key*, a plain string that is hashable and cacheable:
``"zoo:<name>"`` for a zoo organism or preset, ``"dir:<path>"`` for a local checkpoint directory
(seqlens or Hugging Face format). Every cached analysis takes the key, not the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import streamlit as st

DEFAULT_MODEL = "induction-attn2"
SOURCES = ("Zoo organism", "Local directory")
MODEL_KEY = "model_key"  # session_state: the key of the model chosen in the sidebar


def error_text(exc: BaseException) -> str:
    """One readable line for ``exc`` (KeyError's quoting undone; the class name if no message)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextmanager
def errors_shown(what: str, where: Any = None) -> Iterator[None]:
    """Show an exception raised inside the block as ``st.error("<what>: <message>")`` (never a
    traceback) and swallow it. Streamlit's own control flow (``st.stop``, reruns) is a
    ``BaseException`` and passes through."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 — every failure must become a message
        (where or st).error(f"{what}: {error_text(e)}")


# ----------------------------------------------------------------------------- widget persistence


def persistent(key: str, default: Any = None, options: Sequence[Any] | None = None) -> str:
    """Widget key for a value that survives page switches: Streamlit drops a widget's state when a
    page without the widget runs, so the value is mirrored in ``st.session_state[key]`` and copied
    back into the widget's key (``"w_" + key``) before the widget is drawn. Call :func:`remember`
    with the widget's value after drawing it. ``options``: drop a remembered value no longer offered."""
    wkey = "w_" + key
    stored = st.session_state[wkey] if wkey in st.session_state else st.session_state.get(key, default)
    value = _valid(stored, default, options)
    if value is not None and (wkey not in st.session_state or value != stored):
        st.session_state[wkey] = value
    return wkey


def _valid(value: Any, default: Any, options: Sequence[Any] | None) -> Any:
    """``value`` if ``options`` allow it (a list: the allowed items), else the default."""
    if options is None:
        return value
    if isinstance(value, list):
        return [v for v in value if v in options]
    if value in options:
        return value
    if isinstance(default, list):
        return [v for v in default if v in options]
    return default if default in options else (options[0] if options else None)


def remember(key: str, value: Any) -> Any:
    st.session_state[key] = value
    return value


# ----------------------------------------------------------------------------- models


@st.cache_resource(show_spinner="Loading model ...")
def load_model(model_key: str):
    """The model for ``model_key`` (loaded once per process and shared by every session)."""
    import seqlens

    kind, _, value = model_key.partition(":")
    if kind == "zoo":
        return seqlens.load(value).eval()
    if kind == "dir":
        path = Path(value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"directory {str(path)!r} does not exist")
        if not path.is_dir():
            raise FileNotFoundError(f"{str(path)!r} is a file, not a checkpoint directory")
        model = seqlens.load(path).eval()
        return model
    raise ValueError(f"model key: expected 'zoo:<name>' or 'dir:<path>', got {model_key!r}")


def zoo_names() -> list[str]:
    from seqlens.models import zoo

    return zoo.names()


def sidebar_model_picker() -> str | None:
    """Draw the model choice in the sidebar; store and return its model key (None when a local
    directory is chosen but not typed in yet)."""
    sb = st.sidebar
    sb.header("Model")
    source = sb.radio("Source", SOURCES, key=persistent("model_source", SOURCES[0], SOURCES), horizontal=True)
    remember("model_source", source)
    if source == SOURCES[0]:
        names = zoo_names()
        default = DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
        name = sb.selectbox("Organism", names, key=persistent("zoo_name", default, names),
                            help="Zoo organisms are trained on synthetic tasks or stdlib source; "
                                 "tiny-* presets are untrained.")
        remember("zoo_name", name)
        key = f"zoo:{name}"
    else:
        path = sb.text_input("Checkpoint directory", key=persistent("model_dir", ""),
                             placeholder="/path/to/model (config.json + safetensors)",
                             help="A local directory in seqlens or Hugging Face format; nothing is downloaded.")
        remember("model_dir", path)
        key = f"dir:{path.strip()}" if path.strip() else None
    st.session_state[MODEL_KEY] = key
    return key


def current_model():
    """``(model_key, model)`` of the sidebar's choice; on failure shows a clear message in the
    page and stops the page (the sidebar stays usable)."""
    key = st.session_state.get(MODEL_KEY)
    if key is None:
        st.info("Enter a local checkpoint directory in the sidebar, or pick a zoo organism.")
        st.stop()
    try:
        return key, load_model(key)
    except Exception as e:  # noqa: BLE001
        label = key.partition(":")[2]
        st.error(f"Could not open model {label!r}: {error_text(e)}")
        st.stop()


def model_label(model_key: str) -> str:
    kind, _, value = model_key.partition(":")
    return value if kind == "zoo" else Path(value).name or value
