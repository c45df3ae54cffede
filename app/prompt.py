"""The prompt an analysis runs on: free text, a task sample or token ids, turned into token ids
with readable labels, and validated (empty, too long, ids outside the vocabulary) with messages.

How text becomes tokens depends on the model:

- Hugging Face models with a tokenizer: ``model.tokenizer`` (no special tokens added);
- byte-level models (vocabulary 256, no tokenizer; the stdlib text organisms and the presets):
  the UTF-8 bytes of the text;
- task-vocabulary organisms (vocabulary < 256, no tokenizer): free text has no meaning; the
  task sample (``get_batch(model.recipe, 0, "eval").tokens[row]``) or token ids are offered.

Labels: bytes as characters with whitespace made visible (``␣ ↵ ⇥``, other bytes ``\\xNN``),
task tokens as ids with the task's special names (``BOS``, ``SEP``, ...), tokenizer tokens as
their text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import streamlit as st

from seqlens.app.state import error_text, persistent, remember
from seqlens.text import encode, is_byte_level

FREE_TEXT, TASK_SAMPLE, TOKEN_IDS = "Free text", "Task sample", "Token ids"
DEFAULT_TEXT = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n"
DEFAULT_IDS = "1, 2, 3, 4, 1, 2, 3, 4"

_VISIBLE = {ord(" "): "␣", ord("\n"): "↵", ord("\t"): "⇥", ord("\r"): "␍"}


class PromptError(ValueError):
    """A prompt that cannot be run (empty, too long, bad ids); the message is shown as is."""


@dataclass(frozen=True)
class Prompt:
    """Token ids of one sequence, their labels and where they came from."""

    ids: tuple[int, ...]
    labels: tuple[str, ...]
    source: str

    def tensor(self):
        import torch

        return torch.tensor([self.ids], dtype=torch.long)


# ----------------------------------------------------------------------------- model facts


def task_specials(model) -> dict[int, str]:
    """``{id: NAME}`` of a task organism's special tokens (empty for byte-level / no recipe)."""
    recipe = getattr(model, "recipe", None)
    if recipe is None:
        return {}
    from seqlens.tasks import task_vocab

    try:
        vocab = task_vocab(recipe)
    except Exception:  # noqa: BLE001 — labels are cosmetic; never fail a page over them
        return {}
    if getattr(vocab, "byte_level", False):
        return {}
    return {int(i): name.upper() for name, i in vocab.specials.items()}


def modes_for(model) -> list[str]:
    """Prompt kinds that make sense for ``model``, the default first."""
    modes = []
    if getattr(model, "recipe", None) is not None:
        modes.append(TASK_SAMPLE)
    if getattr(model, "tokenizer", None) is not None or is_byte_level(model):
        recipe = getattr(model, "recipe", None)
        modes.insert(0 if recipe is None or recipe.data == "corpus:stdlib" else 1, FREE_TEXT)
    modes.append(TOKEN_IDS)
    return modes


# ----------------------------------------------------------------------------- labels


def byte_label(b: int) -> str:
    if b in _VISIBLE:
        return _VISIBLE[b]
    if 33 <= b <= 126:
        return chr(b)
    return f"\\x{b:02x}"


def token_labels(model, ids: tuple[int, ...] | list[int]) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        out = []
        for i in ids:
            text = tok.decode([int(i)])
            out.append("".join(_VISIBLE.get(ord(c), c) for c in text) if text else f"<{int(i)}>")
        return out
    if is_byte_level(model):
        return [byte_label(int(i)) for i in ids]
    specials = task_specials(model)
    return [specials.get(int(i), str(int(i))) for i in ids]


# ----------------------------------------------------------------------------- encoding


def encode_text(model, text: str) -> list[int]:
    if not text:
        raise PromptError("The prompt is empty: type some text.")
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return encode(text, tok)
    if is_byte_level(model):
        return encode(text)
    raise PromptError(f"Free text needs a tokenizer or a byte-level model; this model has a task vocabulary "
                      f"of {model.cfg.vocab_size} ids: use a task sample or token ids.")


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """Comma- or space-separated integers in ``[0, vocab_size)``."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise PromptError("The prompt is empty: enter token ids separated by commas, e.g. 1, 2, 3.")
    ids = []
    for p in parts:
        try:
            ids.append(int(p))
        except ValueError:
            raise PromptError(f"Token ids: {p!r} is not an integer (expected comma-separated integers "
                              f"in [0, {vocab_size})).") from None
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise PromptError(f"Token ids: {bad[:5]} outside the vocabulary [0, {vocab_size}).")
    return ids


def check_length(model, ids: list[int]) -> None:
    n_ctx = model.cfg.n_ctx
    if not ids:
        raise PromptError("The prompt is empty.")
    if len(ids) > n_ctx:
        hard = model.cfg.positions == "learned" and not model.cfg.is_recurrent
        why = ("its learned position table has no entry past that" if hard
               else "it was trained on that context; longer prompts are not analysed")
        raise PromptError(f"The prompt has {len(ids)} tokens but the model's context is n_ctx={n_ctx} "
                          f"({why}); shorten it by {len(ids) - n_ctx} tokens.")


@st.cache_data(show_spinner=False)
def task_sample(model_key: str, row: int) -> tuple[int, ...]:
    """Row ``row`` of the organism's first evaluation batch."""
    from seqlens.app.state import load_model
    from seqlens.tasks import get_batch

    model = load_model(model_key)
    tokens = get_batch(model.recipe, 0, split="eval").tokens
    if not 0 <= row < tokens.shape[0]:
        raise PromptError(f"Task sample: row {row} outside [0, {tokens.shape[0]}).")
    return tuple(int(t) for t in tokens[row])


@st.cache_data(show_spinner=False)
def task_rows(model_key: str) -> int:
    from seqlens.app.state import load_model
    from seqlens.tasks import get_batch

    return int(get_batch(load_model(model_key).recipe, 0, split="eval").tokens.shape[0])


def build_prompt(model_key: str, model, mode: str, text: str = "", ids_text: str = "", row: int = 0) -> Prompt:
    """The validated :class:`Prompt` (raises :class:`PromptError` with a message for the user)."""
    if mode == FREE_TEXT:
        ids, source = encode_text(model, text), "free text"
    elif mode == TASK_SAMPLE:
        if getattr(model, "recipe", None) is None:
            raise PromptError("Task samples need a zoo organism (this model has no training recipe).")
        ids, source = list(task_sample(model_key, int(row))), f"{model.recipe.data} eval sample {row}"
    elif mode == TOKEN_IDS:
        ids, source = parse_ids(ids_text, model.cfg.vocab_size), "token ids"
    else:
        raise PromptError(f"Unknown prompt kind {mode!r}.")
    check_length(model, ids)
    return Prompt(tuple(ids), tuple(token_labels(model, ids)), source)


# ----------------------------------------------------------------------------- widget


def prompt_input(model_key: str, model, where: Any = None) -> Prompt | None:
    """Draw the prompt widgets (shared across pages through session state) and return the
    prompt, or show the problem with ``st.error`` and return None."""
    where = where or st
    modes = modes_for(model)
    left, right = where.columns([1, 2])
    mode = left.radio("Prompt", modes, key=persistent("prompt_mode", modes[0], modes), horizontal=True)
    remember("prompt_mode", mode)
    text = ids_text = ""
    row = 0
    if mode == FREE_TEXT:
        how = "tokenizer" if getattr(model, "tokenizer", None) is not None else "UTF-8 bytes"
        text = where.text_area(f"Text (encoded as {how}; context {model.cfg.n_ctx} tokens)",
                               key=persistent("prompt_text", DEFAULT_TEXT), height=110)
        remember("prompt_text", text)
    elif mode == TASK_SAMPLE:
        try:
            n_rows = task_rows(model_key)
        except Exception as e:  # noqa: BLE001
            where.error(f"Task sample: {error_text(e)}")
            return None
        if not 0 <= st.session_state.get("w_prompt_row", 0) < n_rows:
            st.session_state["w_prompt_row"] = 0
        row = right.number_input(f"Sample of the evaluation batch ({model.recipe.data}, 0–{n_rows - 1})",
                                 min_value=0, max_value=n_rows - 1, step=1,
                                 key=persistent("prompt_row", 0))
        remember("prompt_row", row)
    else:
        ids_text = right.text_input(f"Token ids (comma-separated, each in [0, {model.cfg.vocab_size}))",
                                    key=persistent("prompt_ids", DEFAULT_IDS))
        remember("prompt_ids", ids_text)
    try:
        return build_prompt(model_key, model, mode, text=text, ids_text=ids_text, row=int(row))
    except Exception as e:  # noqa: BLE001 — PromptError and anything a tokenizer raises
        where.error(error_text(e))
        return None
