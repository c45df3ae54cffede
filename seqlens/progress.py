"""Progress of long analyses: every long library function takes ``progress=``.

``progress`` is ``True`` (a tqdm bar on the console), ``False`` / ``None`` (silent), or a callable
``progress(done, total)`` called once at the start (``done = 0``) and after every step (``total``
may be None when unknown). Callers that draw their own bars (the dashboard's ``st.progress``)
pass a callable instead of patching tqdm.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Union

Progress = Union[bool, None, Callable[[int, "int | None"], Any]]


class CallbackBar:
    """The part of tqdm's interface the library uses (iteration, ``update``, ``close``, ``n``,
    ``total``), reporting each step to ``fn(done, total)``."""

    def __init__(self, fn: Callable[[int, int | None], Any], iterable: Iterable | None = None,
                 total: int | None = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.fn, self.iterable, self.total, self.n = fn, iterable, total, 0
        fn(0, total)

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        self.fn(self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> "CallbackBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(progress: Progress, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it"):
    """A bar for ``progress`` (see the module docstring): tqdm for True / False / None (disabled),
    a :class:`CallbackBar` for a callable."""
    if callable(progress):
        return CallbackBar(progress, iterable, total)
    if progress is None or isinstance(progress, bool):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress)
    raise ValueError(f"progress: expected True, False, None or a callable(done, total), got {progress!r}")
