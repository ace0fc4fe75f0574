"""The dashboard's pictures: small inline SVG bar charts, and released results' charts.

:func:`stacked_bars_svg` draws a stacked bar chart as inline SVG (no script, no style
attribute, so the page's content security policy needs no exception). :class:`ChartCache`
renders a released result's charts with :mod:`fedcity.plots` (or
:meth:`fedcity.analytics.result.QueryResult.plot` for queries) as SVG and keeps the newest
few in memory.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

__all__ = [
    "MAX_BARS",
    "PALETTE",
    "ChartCache",
    "result_charts",
    "stacked_bars_svg",
]

MAX_BARS = 500
"""Most bars one inline chart draws (the last ones)."""
PALETTE = (
    "#4477aa",
    "#ee6677",
    "#228833",
    "#ccbb44",
    "#66ccee",
    "#aa3377",
    "#bbbbbb",
    "#332288",
)
"""Colour-blind-safe colours of the series, in order."""

_QUERY_FORMAT = "fedcity.query_result"
_MODEL_FORMAT = "fedcity.result"


def stacked_bars_svg(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    unit: str,
    element_id: str,
    width: int = 720,
    height: int = 240,
) -> Markup:
    """A stacked bar chart as an inline ``<svg>`` element.

    Parameters
    ----------
    labels : sequence of str
        One label per bar (e.g. round numbers), at most :data:`MAX_BARS` are drawn (the last).
    series : mapping of str to sequence of float
        Each series' value per bar (negative or non-finite values count as 0).
    title, unit : str
        The chart's accessible title and the y axis' unit.
    element_id : str
        The ``id`` of the ``<svg>`` element.
    width, height : int
        Size in pixels.

    Returns
    -------
    markupsafe.Markup
        Escaped, ready to be placed in a page; every bar is a ``<rect class="bar">``.

    Raises
    ------
    ValueError
        A series whose length differs from ``labels``.
    """
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} bars")
    first = max(len(labels) - MAX_BARS, 0)
    labels = list(labels)[first:]
    clean = {
        str(name): [v if math.isfinite(v) and v > 0 else 0.0 for v in list(values)[first:]]
        for name, values in series.items()
    }
    totals = [sum(col) for col in zip(*clean.values(), strict=True)] if clean else []
    top = max(totals, default=0.0) or 1.0
    left, right, upper, lower = 56.0, 150.0, 24.0, 28.0
    plot_w, plot_h = width - left - right, height - upper - lower
    n = max(len(labels), 1)
    step = plot_w / n
    bar_w = max(step * 0.8, 0.5)
    parts = [
        f'<svg id="{escape(element_id)}" class="chart" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left:.1f}" y="16.0" font-size="13" fill="#222">{escape(title)}</text>',
        f'<line x1="{left:.1f}" y1="{upper + plot_h:.1f}" x2="{left + plot_w:.1f}" '
        f'y2="{upper + plot_h:.1f}" stroke="#666"/>',
        f'<line x1="{left:.1f}" y1="{upper:.1f}" x2="{left:.1f}" y2="{upper + plot_h:.1f}" '
        'stroke="#666"/>',
        f'<text x="{left - 6:.1f}" y="{upper + 4:.1f}" font-size="11" text-anchor="end" '
        f'fill="#444">{escape(_short(top))}</text>',
        f'<text x="{left - 6:.1f}" y="{upper + plot_h:.1f}" font-size="11" '
        'text-anchor="end" fill="#444">0</text>',
        f'<text x="12.0" y="{upper + plot_h / 2:.1f}" font-size="11" fill="#444" '
        f'transform="rotate(-90 12.0 {upper + plot_h / 2:.1f})" text-anchor="middle">'
        f"{escape(unit)}</text>",
    ]
    names = list(clean)
    for i, label in enumerate(labels):
        x = left + i * step + (step - bar_w) / 2
        y = upper + plot_h
        for k, name in enumerate(names):
            value = clean[name][i]
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[k % len(PALETTE)]}">'
                f"<title>{escape(label)}: {escape(name)} {escape(_short(value))} "
                f"{escape(unit)}</title></rect>"
            )
    for i in sorted({0, len(labels) - 1}) if labels else []:
        x = left + i * step + step / 2
        parts.append(
            f'<text x="{x:.1f}" y="{upper + plot_h + 16:.1f}" font-size="11" '
            f'text-anchor="middle" fill="#444">{escape(labels[i])}</text>'
        )
    for k, name in enumerate(names[:12]):
        y = upper + 14.0 * k
        parts.append(
            f'<rect x="{left + plot_w + 12:.1f}" y="{y:.1f}" width="10.0" height="10.0" '
            f'fill="{PALETTE[k % len(PALETTE)]}"/>'
            f'<text class="legend" x="{left + plot_w + 26:.1f}" y="{y + 9:.1f}" '
            f'font-size="11" fill="#222">{escape(name[:20])}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(value: float) -> str:
    return f"{value:.3g}"


def _parse(result_json: str) -> dict[str, Any]:
    data = json.loads(result_json)
    if not isinstance(data, dict):
        raise ValueError("a result is a JSON object")
    return data


def result_charts(result_json: str) -> list[str]:
    """Names of the charts a released result can be drawn as (empty if none).

    Parameters
    ----------
    result_json : str
        A job's result JSON (a model's or a query's).
    """
    try:
        data = _parse(result_json)
    except ValueError:
        return []
    if data.get("format") == _QUERY_FORMAT:
        return ["query"]
    if data.get("format") != _MODEL_FORMAT:
        return []
    history = data.get("history") or []
    out = ["training", "participation"] if history else []
    model = data.get("model")
    if isinstance(model, dict) and model.get("type") == "glm":
        out.append("coefficients")
    if isinstance(data.get("curves"), dict):
        from fedcity.learn.metrics import EvaluationCurves

        try:
            curves = EvaluationCurves.from_dict(data["curves"])
        except ValueError:
            return out
        out.append("roc")
        if curves.calibration_predicted:
            out.append("calibration")
    return out


class ChartCache:
    """Renders released results' charts as SVG, keeping the newest ``size`` in memory.

    Rendering is serialised by one lock (matplotlib's pyplot state is global).

    Parameters
    ----------
    size : int
        Charts kept.
    """

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self._lock = threading.Lock()
        self._charts: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def svg(self, job_id: str, name: str, result_json: str) -> bytes:
        """The SVG of chart ``name`` of a job's result.

        Raises
        ------
        KeyError
            The result has no chart of that name.
        ValueError
            The chart cannot be drawn from this result.
        """
        if name not in result_charts(result_json):
            raise KeyError(name)
        key = (job_id, name)
        with self._lock:
            cached = self._charts.get(key)
            if cached is not None:
                self._charts.move_to_end(key)
                return cached
            svg = _render(name, result_json)
            self._charts[key] = svg
            while len(self._charts) > self.size:
                self._charts.popitem(last=False)
            return svg


def _render(name: str, result_json: str) -> bytes:
    if name == "query":
        from fedcity.analytics.result import QueryResult

        with tempfile.TemporaryDirectory(prefix="fedcity-dashboard-") as tmp:
            path = QueryResult.from_json(result_json).plot(Path(tmp) / "query.svg")
            return path.read_bytes()
    from fedcity import plots

    view = plots.result_view(result_json)
    if name == "training":
        fig = plots.plot_training_curves(view)
    elif name == "participation":
        fig = plots.plot_participation(view)
    elif name == "coefficients":
        fig = plots.plot_coefficients(view)
    elif name in ("roc", "calibration") and view.curves is not None:
        fig = (plots.plot_roc if name == "roc" else plots.plot_calibration)(view.curves)
    else:
        raise KeyError(name)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()
