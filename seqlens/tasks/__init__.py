"""Deterministic synthetic tasks for training and probing small "model organisms".

Every generator returns a :class:`TaskBatch` and takes a ``seed`` (an ``int``, or a
``torch.Generator`` that is used and advanced): identical arguments give identical batches.

Conventions shared by all tasks
-------------------------------
- ``tokens``: ``LongTensor[B, L]``.
- ``targets``: ``LongTensor[B, L]``, next-token targets aligned with ``tokens``: ``targets[:, t]``
  is what the model should predict after reading ``tokens[:, :t+1]``, i.e. ``tokens`` shifted left
  by one. Where no next token exists (the last position, padding) ``targets`` hold ``vocab.pad``
  and ``loss_mask`` is False, so every target is a valid index.
- ``loss_mask``: ``BoolTensor[B, L]``, the positions where the loss / metric counts.
- ``meta``: task-specific metadata (tensors, lists, scalars); documented per task.
- ``vocab``: a :class:`TaskVocab` (``vocab_size`` and named special ids).

Token ids
---------
- ``induction``: ``bos = 0``; random tokens ``1 .. vocab_size-1``.
- ``mqar``: ``pad = 0`` (the filler when ``random_fill=False``); keys ``1 .. V//2-1``; values
  ``V//2 .. V-1``.
- ``copying``: symbols ``0 .. A-1``; ``$ = A`` (bos), ``| = A+1`` (sep), ``. = A+2`` (eos),
  ``* = A+3`` (pad); ``vocab_size = A + 4`` (A = ``alphabet``, 10 by default).
- ``icll``: symbols ``0 .. V-3``; ``sep = V-2``; ``pad = V-1`` (V = ``vocab``, 20 by default).
- ``passkey``, ``successor``, ``noun_lists``: bytes (``BYTE_VOCAB``: vocab 256, token = byte
  value, ``pad = 0``), or the ids of a Hugging Face-style ``tokenizer`` when one is given.

``TASKS`` maps task names to generators; ``make_task(name, **kwargs)`` checks the name and the
argument names before calling one.

Layout: one module per task (:mod:`.induction`, :mod:`.mqar`, :mod:`.copying`, :mod:`.passkey`,
:mod:`.successor`, :mod:`.icll`, :mod:`.noun_lists`) on the shared containers of :mod:`.base`;
:mod:`.metrics` (masked loss, named metrics) and :mod:`.data` (a training recipe's batches,
vocabulary and evaluation, used by the trainer and by analyses). Everything is re-exported here.
"""

from __future__ import annotations

# every public name of the former single module stays importable from seqlens.tasks
from .base import BYTE_VOCAB, SeedLike, TaskBatch, TaskVocab, make_generator
from .copying import COPY_EVAL_LENGTHS, COPY_TRAIN_LENGTHS, copying, copying_eval, copying_vocab, string_accuracy
from .data import CORPUS_VOCAB, evaluate, get_batch, step_seed, task_kwargs, task_vocab
from .icll import DFA, dfa_accepts, icll, icll_legal_next, legal_next_accuracy, random_dfa
from .induction import induction
from .metrics import METRICS, masked_loss
from .mqar import mqar
from .noun_lists import MEMORY_CUE, MEMORY_FILLER, MEMORY_INTRO, NOUN_CONDITIONS, NOUNS, noun_lists
from .passkey import (PASSKEY_FILLER, PASSKEY_INTRO, PASSKEY_NEEDLE, PASSKEY_QUESTION, PASSKEY_STYLES,
                      passkey)
from .registry import TASKS, make_task
from .successor import SUCCESSOR_FAMILIES, SUCCESSOR_TEMPLATES, successor, successor_of

Batch = TaskBatch
"""The trainer's former name of :class:`TaskBatch` (one type for task, corpus and token batches)."""

__all__ = [
    "BYTE_VOCAB",
    "Batch",
    "CORPUS_VOCAB",
    "DFA",
    "METRICS",
    "NOUNS",
    "SUCCESSOR_FAMILIES",
    "TASKS",
    "TaskBatch",
    "TaskVocab",
    "copying",
    "copying_eval",
    "dfa_accepts",
    "evaluate",
    "get_batch",
    "task_kwargs",
    "icll",
    "icll_legal_next",
    "induction",
    "legal_next_accuracy",
    "make_generator",
    "make_task",
    "masked_loss",
    "mqar",
    "noun_lists",
    "passkey",
    "random_dfa",
    "step_seed",
    "string_accuracy",
    "successor",
    "successor_of",
    "task_vocab",
]
