"""Reading what Plotly really drew (gd.data / gd.layout) from the page."""
from __future__ import annotations

from typing import Any

FIG_JS = """
(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  if (!gd || !gd.data || !gd._fullLayout) return null;
  const arr = (v) => {
    if (v == null) return null;
    if (v._inputArray !== undefined) {              // plotly's decoded base64 typed array
      if (!ArrayBuffer.isView(v._inputArray)) return arr(v._inputArray);   // 2-D: already rows
      const flat = Array.from(v._inputArray);
      const shape = v.shape ? String(v.shape).split(',').map(Number) : [flat.length];
      if (shape.length < 2) return flat;
      const out = [];
      for (let i = 0; i < shape[0]; i++) out.push(flat.slice(i * shape[1], (i + 1) * shape[1]));
      return out;
    }
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (Array.isArray(v)) return v.map((e) => (e != null && typeof e === 'object') ? arr(e) : e);
    return v;
  };
  return {
    data: gd.data.map((t) => ({type: t.type, name: t.name || null, x: arr(t.x), y: arr(t.y), z: arr(t.z),
                                text: arr(t.text)})),
    title: (gd.layout.title && (gd.layout.title.text ?? gd.layout.title)) || '',
    meta: gd.layout.meta || null,
    empty: gd.layout.meta && gd.layout.meta.empty || null,
  };
}
"""


def figure(page, graph_id: str) -> dict[str, Any] | None:
    """The figure drawn in dcc.Graph `graph_id` (typed arrays as lists), or None before it is drawn."""
    return page.evaluate(FIG_JS, graph_id)


def wait_figure(page, graph_id: str, predicate: str = "f => f && f.data.length > 0", timeout: float = 30_000) -> dict:
    """Wait until the figure satisfies a JS predicate over the object FIG_JS returns; return it."""
    page.wait_for_function(f"([id, pred]) => {{ const f = ({FIG_JS})(id); return (eval(pred))(f); }}",
                           arg=[graph_id, predicate], timeout=timeout)
    return figure(page, graph_id)


def wait_title(page, graph_id: str, text: str, timeout: float = 30_000) -> dict:
    """Wait until the figure's title contains `text`."""
    return wait_figure(page, graph_id, f"f => f && String(f.title).includes({text!r})", timeout)
