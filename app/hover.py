"""A CircuitsVis-style token view: the prompt as a row of tokens; hovering a token colours every
other token by the attention the hovered token *pays* to it (query view) or *receives* from it
(key view). Click a token to pin it, click it again to release; the head chips switch heads.

Self-contained HTML + JavaScript (no external resources). All data travels as JSON inside the
script and is written into the page with ``textContent``, so prompt text cannot inject markup.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

QUANT = 1000  # weights travel as integers 0..QUANT relative to their head's maximum


def _payload(patterns: np.ndarray, labels: Sequence[str], heads: Sequence[str]) -> dict:
    a = np.abs(np.asarray(patterns, dtype=np.float64))
    scale = a.reshape(a.shape[0], -1).max(1)
    scale[scale == 0] = 1.0
    q = np.rint(a / scale[:, None, None] * QUANT).astype(np.int32)
    return {"labels": [str(s) for s in labels], "heads": [str(h) for h in heads],
            "scale": [float(s) for s in scale], "att": q.tolist(), "quant": QUANT}


def token_hover_html(patterns: np.ndarray, labels: Sequence[str], heads: Sequence[str],
                     caption: str = "", pinned: int | None = -1) -> str:
    """HTML document for ``patterns [n_heads, L, L]`` (rows = queries, columns = keys; signed
    implicit attention is shown by magnitude), one label per token and one name per head.
    ``pinned``: the token shown before any hover (negative counts from the end; None: none)."""
    patterns = np.asarray(patterns)
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2] or patterns.shape[1] != len(labels):
        raise ValueError(f"patterns: expected [n_heads, L, L] with L = {len(labels)} labels, "
                         f"got {list(patterns.shape)}")
    if patterns.shape[0] != len(heads):
        raise ValueError(f"heads: expected {patterns.shape[0]} names, got {len(heads)}")
    pin = None if pinned is None else int(pinned) % len(labels)
    data = json.dumps({**_payload(patterns, labels, heads), "caption": caption, "pinned": pin}, ensure_ascii=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _TEMPLATE.replace("__DATA__", data)


_TEMPLATE = r"""<!doctype html>
<html><head><meta charset="utf-8">
<style>
  body { font-family: "Source Sans Pro", system-ui, sans-serif; margin: 0; padding: 6px 4px; color: #262730; }
  .bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 8px; font-size: 13px; }
  .chip { border: 1px solid #c9ccd3; border-radius: 12px; padding: 2px 10px; cursor: pointer; background: #fff;
          user-select: none; }
  .chip.on { background: #262730; color: #fff; border-color: #262730; }
  .sep { width: 1px; height: 18px; background: #ddd; margin: 0 4px; }
  .tokens { line-height: 2.1; font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 14px; }
  .tok { display: inline-block; padding: 0 3px; margin: 1px 1px; border-radius: 3px; border: 1px solid #e3e5ea;
         cursor: pointer; white-space: pre; min-width: 8px; text-align: center; }
  .tok.focus { outline: 2px solid #ff4b4b; outline-offset: 0; }
  .tok.pinned { outline: 2px solid #262730; }
  .info { font-size: 13px; margin-top: 8px; min-height: 18px; color: #555; }
  .cap { font-size: 12px; color: #777; margin-bottom: 4px; }
</style></head>
<body>
<div class="cap" id="cap"></div>
<div class="bar" id="heads"></div>
<div class="bar" id="modes"></div>
<div class="tokens" id="tokens"></div>
<div class="info" id="info">Hover a token (click to pin it).</div>
<div class="cap">Colour: the attention the hovered token pays to each earlier token (paid) or receives from each later
token (received), relative to its largest weight.</div>
<script>
(function () {
  const D = __DATA__;
  const L = D.labels.length;
  let head = 0, mode = "paid", focus = null, pinned = (D.pinned === undefined) ? null : D.pinned;
  const colours = { paid: [31, 119, 180], received: [214, 39, 40] };
  document.getElementById("cap").textContent = D.caption || "";

  function chip(parent, text, on, click) {
    const el = document.createElement("span");
    el.className = "chip" + (on ? " on" : "");
    el.textContent = text;
    el.addEventListener("click", click);
    parent.appendChild(el);
    return el;
  }
  const headBar = document.getElementById("heads");
  const headChips = D.heads.map((name, h) => chip(headBar, name, h === 0, () => { head = h; refresh(); }));
  const modeBar = document.getElementById("modes");
  const modeChips = {
    paid: chip(modeBar, "paid: query → keys", true, () => { mode = "paid"; refresh(); }),
    received: chip(modeBar, "received: key ← queries", false,
                   () => { mode = "received"; refresh(); }),
  };

  const box = document.getElementById("tokens");
  const spans = D.labels.map((lab, i) => {
    const el = document.createElement("span");
    el.className = "tok";
    el.textContent = lab;
    el.dataset.i = i;
    el.addEventListener("mouseenter", () => { focus = i; refresh(); });
    el.addEventListener("mouseleave", () => { focus = null; refresh(); });
    el.addEventListener("click", () => { pinned = (pinned === i) ? null : i; refresh(); });
    box.appendChild(el);
    return el;
  });

  function weight(i, j) {  // attention of the shown relation, in [0, 1] of the head's max
    const a = D.att[head];
    return (mode === "paid" ? a[i][j] : a[j][i]) / D.quant;
  }
  function refresh() {
    headChips.forEach((c, h) => c.classList.toggle("on", h === head));
    Object.entries(modeChips).forEach(([m, c]) => c.classList.toggle("on", m === mode));
    const t = (focus !== null) ? focus : pinned;
    const info = document.getElementById("info");
    const rgb = colours[mode];
    if (t === null) {
      spans.forEach((s) => { s.style.background = "#fff"; s.classList.remove("focus", "pinned"); s.title = ""; });
      info.textContent = "Hover a token (click to pin it).";
      return;
    }
    let max = 0;
    for (let j = 0; j < L; j++) max = Math.max(max, weight(t, j));
    const top = [];
    spans.forEach((s, j) => {
      const w = weight(t, j);
      const alpha = max > 0 ? w / max : 0;
      s.style.background = `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha.toFixed(3)})`;
      s.style.color = alpha > 0.6 ? "#fff" : "#262730";
      const value = w * D.scale[head];
      s.title = `${j} ${D.labels[j]}: ${value.toFixed(3)}`;
      s.classList.toggle("focus", j === t);
      s.classList.toggle("pinned", j === pinned && j !== t);
      if (w > 0) top.push([value, j]);
    });
    top.sort((x, y) => y[0] - x[0]);
    const verb = mode === "paid" ? "attends to" : "is attended by";
    info.textContent = `${D.heads[head]}: token ${t} "${D.labels[t]}" ${verb} ` +
      top.slice(0, 5).map(([v, j]) => `${j} "${D.labels[j]}" (${v.toFixed(2)})`).join(", ");
  }
  refresh();
})();
</script>
</body></html>
"""
