"""How a page shows a library Result: its figure, the data and settings it was computed on (the
Result's ``settings``) under it, and downloads (the figure as self-contained HTML, PNG from the
chart's camera button; the Result as JSON and CSV). Every page draws its figures through
:func:`result_figure`, so a number on screen always says what it was computed on."""

from __future__ import annotations

from typing import Any

import streamlit as st

TOOLBAR_PX = 34  # the chart toolbar's height: titles start below it, never under it
MAX_VALUE_CHARS = 60  # a setting longer than this is shortened in the caption (the JSON has it all)
SKIP_SETTINGS = ("per_set", "sets")  # bulky tables that belong in the JSON download, not the caption


def settings_text(settings: dict[str, Any]) -> str:
    """``key = value`` pairs of a Result's settings on one line; long values shortened with "…"."""
    parts = []
    for key, value in settings.items():
        if key in SKIP_SETTINGS or value is None or hasattr(value, "shape"):
            continue
        text = str(value)
        if len(text) > MAX_VALUE_CHARS:
            text = text[:MAX_VALUE_CHARS - 1] + "…"
        parts.append(f"{key} = {text}")
    return "; ".join(parts)


def _frame_csv(result) -> bytes | None:
    try:
        return result.to_frame().to_csv(index=False).encode()
    except Exception:  # noqa: BLE001 — a Result without a table offers JSON only
        return None


def downloads(key: str, fig=None, result=None) -> None:
    """Download buttons in one row: the figure (HTML, plotly.js inlined: opens offline) and the
    Result (JSON; CSV of its ``to_frame()``). Files are built on click, not on every rerun."""
    items = []
    if fig is not None:
        items.append(("HTML", "the figure, self-contained (opens offline)",
                      lambda: fig.to_html(include_plotlyjs=True, full_html=True), f"{key}.html", "text/html"))
    if result is not None and hasattr(result, "to_json"):
        items.append(("JSON", "the Result with its settings (Result.from_json reads it back)", result.to_json,
                      f"{key}.json", "application/json"))
        if hasattr(result, "to_frame"):
            items.append(("CSV", "the Result's table (to_frame)", lambda: _frame_csv(result) or b"",
                          f"{key}.csv", "text/csv"))
    with st.container(horizontal=True, gap="small"):  # short labels: they fit the narrowest column
        for label, what, data, name, mime in items:
            st.download_button(label, data, file_name=name, mime=mime, key=f"dl_{key}_{name}", on_click="ignore",
                               type="tertiary", icon=":material/download:", help=f"Download {what}.")


def wrap_title(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` characters at spaces."""
    import textwrap

    return textwrap.wrap(text, width) or [""]


def tidy(fig, title_chars: int = 48):
    """Plotly layout fixes the browser showed: a long title wraps (it ran under the chart's
    toolbar, which sits top right) and sits left, with room above the plot for its lines; axis
    titles, tick labels and colour-bar ticks get the margins they need (nothing cut off)."""
    title = fig.layout.title.text or ""
    lines = wrap_title(title.replace("<br>", " "), title_chars) if title else []
    top = TOOLBAR_PX + 20 * len(lines) + 16
    margin = fig.layout.margin
    fig.update_layout(margin={"t": max(top, margin.t or 0), "l": margin.l, "r": max(margin.r or 0, 20),
                              "b": margin.b})
    if lines:
        fig.update_layout(title={"text": "<br>".join(lines), "x": 0, "xanchor": "left", "y": 1, "yanchor": "top",
                                 "pad": {"t": TOOLBAR_PX}, "font": {"size": 14}})
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def result_figure(fig, key: str, result=None, note: str | None = None, title_chars: int = 48) -> None:
    """``st.plotly_chart(fig)`` (tidied, :func:`tidy`) with the PNG button named after ``key``;
    under it ``note``, the settings the Result was computed on, and the downloads."""
    tidy(fig, title_chars)
    config = {"toImageButtonOptions": {"format": "png", "filename": key, "scale": 2}, "displaylogo": False}
    st.plotly_chart(fig, key=key, config=config)
    settings = getattr(result, "settings", None)
    caption = " ".join(p for p in (note, f"Computed on: {settings_text(settings)}." if settings else None) if p)
    if caption:
        st.caption(caption)
    downloads(key, fig, result)


def method_line(text: str, section: str) -> None:
    """The page's "what am I looking at" line: one sentence and the METHODS.md section it follows."""
    st.caption(f"**What am I looking at?** {text} Method: docs/methods.md {section}.")
