"""Shared app state: which model is open (sidebar, kept in ``st.session_state``), loading it once
per process (``st.cache_resource``), and turning failures into messages instead of tracebacks.

Sessions are isolated: the shared model is never run; each session runs its own deep copy
(:func:`load_model`), so hooks one session attaches (ablation, calibration, mitigations, state
taps) never reach another session, and every ``st.cache_data`` entry is a function of the pristine
model and the inputs only. Local directories open only under the roots the operator configured
(:func:`model_roots`).

A model is named by a *model key*, a plain string that is hashable and cacheable:
``"zoo:<name>"`` for a zoo organism or preset, ``"dir:<path>"`` for a local checkpoint directory
(seqlens or Hugging Face format). Every cached analysis takes the key, not the model.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import streamlit as st

DEFAULT_MODEL = "induction-attn2"
SOURCES = ("Zoo organism", "Local directory")
MODEL_KEY = "model_key"  # session_state: the key of the model chosen in the sidebar
SESSION_MODELS_KEY = "session_models"  # session_state: {model key: this session's copy}
SESSION_MODELS = 4  # copies a session keeps (the capacity fit runs every passkey organism)


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


MODEL_DIRS_ENV = "SEQLENS_MODEL_DIRS"  # os.pathsep-separated roots the directory picker may open


def model_roots() -> list[Path]:
    """The directories under which the sidebar may open a local checkpoint: ``$SEQLENS_MODEL_DIRS``
    (``seqlens app --model-dir DIR`` sets it), symlinks resolved. None by default: a dashboard
    reachable by others must not open (or say whether there is) any path of the machine."""
    text = os.environ.get(MODEL_DIRS_ENV, "")
    return [Path(os.path.realpath(Path(p).expanduser())) for p in text.split(os.pathsep) if p.strip()]


def checked_directory(text: str) -> Path:
    """The checkpoint directory ``text`` names (absolute, or relative to a configured root), after
    checking that it lies under a root of :func:`model_roots` (symlinks and ``..`` resolved first).
    A path outside every root gets the same message whether it exists or not."""
    roots = model_roots()
    if not roots:
        raise PermissionError("no local model directories are configured: start the dashboard with "
                              f"`seqlens app --model-dir DIR` (or set {MODEL_DIRS_ENV}) to open checkpoints under DIR")
    # only "~" / "~/..." (this user) expand: "~name" would say whether user "name" exists
    given = Path(text).expanduser() if text == "~" or text.startswith("~/") else Path(text)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = [path for path in (Path(os.path.realpath(c)) for c in candidates)  # resolved before any check
              if any(path == root or path.is_relative_to(root) for root in roots)]
    if not inside:
        raise PermissionError(f"{text!r} is not under a configured model directory "
                              f"({', '.join(str(r) for r in roots)})")
    path = next((p for p in inside if p.exists()), inside[0])  # relative: the first root that has it
    if not path.exists():
        raise FileNotFoundError(f"directory {text!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"{text!r} is a file, not a checkpoint directory")
    return path


class Pristine:
    """A loaded model that is never run: the one object per model that every browser session
    shares (``st.cache_resource``). Pages attach hooks (ablation, calibration, mitigations, state
    taps, the stop-forward hook of ``mixer_pattern``), so each session works on its own
    :meth:`copy` and nothing one session does reaches another or a shared cache entry."""

    def __init__(self, model) -> None:
        self._model = model

    def copy(self):
        return copy.deepcopy(self._model)


@st.cache_resource(show_spinner="Loading model ...")
def pristine_model(model_key: str) -> Pristine:
    """The shared, never-run model for ``model_key`` (loaded once per process)."""
    import seqlens

    kind, _, value = model_key.partition(":")
    if kind == "zoo":
        return Pristine(seqlens.load(value).eval())
    if kind == "dir":
        return Pristine(seqlens.load(checked_directory(value)).eval())
    raise ValueError(f"model key: expected 'zoo:<name>' or 'dir:<path>', got {model_key!r}")


def load_model(model_key: str):
    """This session's own copy of the model for ``model_key`` (made from :func:`pristine_model`
    on first use, kept in ``st.session_state``; the last :data:`SESSION_MODELS` models used).
    Every analysis runs on it; a copy found with anything still attached (an intervention that
    did not clean up) is replaced by a fresh one, so cached results are always those of the
    pristine model."""
    from seqlens.models.hooks import attached_hooks

    if model_key.startswith("dir:"):  # also on a cache hit: the roots are checked on every use
        checked_directory(model_key[4:])
    models = st.session_state.setdefault(SESSION_MODELS_KEY, {})
    model = models.pop(model_key, None)
    if model is None or attached_hooks(model):
        model = pristine_model(model_key).copy()
    models[model_key] = model  # most recently used last
    while len(models) > SESSION_MODELS:
        models.pop(next(iter(models)))
    return model


def zoo_names() -> list[str]:
    from seqlens.models import zoo

    return zoo.names()


def sidebar_model_picker() -> str | None:
    """Draw the model choice in the sidebar; store and return its model key (None when a local
    directory is chosen but not typed in yet)."""
    sb = st.sidebar
    sb.header("Model")
    _model_from_url(sb)
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
                             help="A local directory in seqlens or Hugging Face format, under one of the model "
                                  "directories the dashboard was started with (`seqlens app --model-dir DIR`); "
                                  "nothing is downloaded.")
        roots = model_roots()
        sb.caption("Model directories: " + ", ".join(f"`{r}`" for r in roots) if roots else
                   "No model directories configured: start with `seqlens app --model-dir DIR`.")
        remember("model_dir", path)
        key = f"dir:{path.strip()}" if path.strip() else None
    st.session_state[MODEL_KEY] = key
    return key


def _model_from_url(sb) -> None:
    """Open the zoo organism a URL names (``/heads?model=text-mamba``): links and the screenshot
    script address a page on a model. Applied once per value, so the sidebar stays in charge."""
    wanted = st.query_params.get("model")
    if not wanted or st.session_state.get("_url_model") == wanted:
        return
    st.session_state["_url_model"] = wanted
    if wanted not in zoo_names():
        sb.warning(f"URL parameter model={wanted!r} is not a zoo organism; the sidebar's choice is kept.")
        return
    for key, value in (("model_source", SOURCES[0]), ("zoo_name", wanted)):
        st.session_state[key] = st.session_state["w_" + key] = value


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


def passkey_series(names: list[str]) -> dict[int, list[str]]:
    """The ``passkey-*`` organisms among ``names`` grouped by training length (their recipe's task
    ``seq_len``), each group sorted by state size; groups of fewer than two are left out (no fit)."""
    from seqlens.models import zoo
    from seqlens.tasks import task_kwargs

    recipes = zoo.organisms()
    groups: dict[int, list[str]] = {}
    for name in names:
        if name.startswith("passkey-") and name in recipes:
            groups.setdefault(int(task_kwargs(recipes[name].recipe)["seq_len"]), []).append(name)
    return {L: sorted(g, key=lambda n: recipes[n].recipe.model.d_state) for L, g in sorted(groups.items())
            if len(g) >= 2}


def model_label(model_key: str) -> str:
    kind, _, value = model_key.partition(":")
    return value if kind == "zoo" else Path(value).name or value
