"""``TASKS`` (name -> generator) and :func:`make_task`, which checks names and arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .base import TaskBatch
from .copying import copying
from .icll import icll
from .induction import induction
from .mqar import mqar
from .noun_lists import noun_lists
from .passkey import passkey
from .successor import successor


TASKS: dict[str, Callable[..., TaskBatch]] = {
    "induction": induction,
    "mqar": mqar,
    "copying": copying,
    "passkey": passkey,
    "successor": successor,
    "icll": icll,
    "noun_lists": noun_lists,
}


def make_task(name: str, **kwargs: Any) -> TaskBatch:
    """Generate a batch of task ``name`` with keyword arguments ``kwargs``.

    Unknown names raise ValueError listing the tasks; unknown or missing arguments raise
    TypeError naming them and listing the task's accepted arguments.
    """
    if name not in TASKS:
        raise ValueError(f"name: unknown task {name!r}; expected one of {sorted(TASKS)}")
    fn = TASKS[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty
               and p not in kwargs]
    if unknown or missing:
        problem = (f"unknown argument(s) {unknown}" if unknown
                   else f"missing required argument(s) {missing}")
        raise TypeError(f"task {name!r}: {problem}; accepted arguments: {list(params)}")
    return fn(**kwargs)
