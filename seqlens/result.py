"""`Result`: the base class of every analysis output (docs/design.md "Results").

A Result is a small dataclass holding the numbers an analysis computed together with the settings
that produced them (model, hook names, seed, kernel backend, ...). It offers three views:

- ``to_frame()``: a tidy pandas DataFrame (one row per number),
- ``figure()``: a plotly Figure (never imports Streamlit; the app only displays it),
- ``to_json()`` / ``from_json()``: a JSON string; tensors become nested lists and are rebuilt as
  tensors by ``from_json`` (fields annotated as tensors, see :meth:`Result._tensor_fields`).

In a notebook a Result shows itself (``_repr_html_``): its type and settings, the first rows of
its table and its figure (plotly.js is inlined once per kernel, so saved notebooks open offline).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

R = TypeVar("R", bound="Result")
REPR_ROWS = 10  # table rows a Result shows in a notebook
_PLOTLY_JS_SENT = [False]  # plotly.js goes into the first figure a kernel shows, then is reused

_TENSOR_TAG = "__tensor__"


def to_jsonable(value: Any) -> Any:
    """Recursively turn tensors (as ``{"__tensor__": nested list, "dtype": str}``), tuples, numpy
    scalars and dataclasses into JSON-serialisable Python values."""
    if isinstance(value, Tensor):
        return {_TENSOR_TAG: value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` for tensors: tagged dicts become tensors again."""
    if isinstance(value, dict):
        if _TENSOR_TAG in value:
            return torch.tensor(value[_TENSOR_TAG], dtype=getattr(torch, value.get("dtype", "float32")))
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


@dataclass(kw_only=True)
class Result:
    """Base of every analysis result: ``settings`` records how the numbers were produced
    (model name / arch, data source, seed, measure, backend, ...). Subclasses add their numbers as
    fields (scores are tensors indexed ``[layer, head]``) and implement ``to_frame`` / ``figure``.
    ``settings`` is keyword-only, so subclasses may declare required fields."""

    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self):
        """A tidy ``pandas.DataFrame`` of the numbers (subclasses override)."""
        raise NotImplementedError(f"{type(self).__name__}.to_frame is not implemented")

    def figure(self):
        """A ``plotly.graph_objects.Figure`` of the numbers (subclasses override)."""
        raise NotImplementedError(f"{type(self).__name__}.figure is not implemented")

    def _repr_html_(self) -> str:
        """Notebook view: the type, the settings it was computed on, the first
        :data:`REPR_ROWS` rows of :meth:`to_frame` and :meth:`figure` (each part only if the
        subclass implements it)."""
        import html

        settings = "; ".join(f"{k} = {_short(v)}" for k, v in self.settings.items() if v is not None)
        parts = [f"<b>{type(self).__name__}</b>", f"<div style='font-size:12px;color:#555'>{html.escape(settings)}</div>"]
        try:
            frame = self.to_frame()
            more = f"<div style='font-size:12px'>{len(frame)} rows; the first {REPR_ROWS}</div>" \
                if len(frame) > REPR_ROWS else ""
            parts.append(frame.head(REPR_ROWS).to_html(index=False, max_cols=12) + more)
        except NotImplementedError:
            pass
        try:
            parts.append(_figure_html(self.figure()))
        except NotImplementedError:
            pass
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable values, plus ``"type"`` (the class name)."""
        return {"type": type(self).__name__, **to_jsonable({f.name: getattr(self, f.name)
                                                            for f in dataclasses.fields(self)})}

    def to_json(self, **kwargs: Any) -> str:
        """JSON string of :meth:`to_dict`; ``kwargs`` go to ``json.dumps`` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        """Rebuild a Result written by :meth:`to_json` (tensors come back as tensors)."""
        data = json.loads(text)
        kind = data.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"text: holds a {kind!r} result, expected {cls.__name__!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"text: unknown fields {sorted(unknown)} for {cls.__name__}")
        return cls(**{k: from_jsonable(v) for k, v in data.items()})


def _short(value: Any, limit: int = 60) -> str:
    text = f"tensor{list(value.shape)}" if isinstance(value, Tensor) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _figure_html(fig) -> str:
    """The figure as an HTML fragment; plotly.js inlined only the first time (no network)."""
    first = not _PLOTLY_JS_SENT[0]
    _PLOTLY_JS_SENT[0] = True
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False)
