"""Figures for the web view: interactive ones (plotly, where a person zooms: device maps, trends, the
loop's accuracy over time) as figure JSON for the page to draw, and static PNG (matplotlib, as a paper
would print them) from the same functions the history command uses."""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.utils import PlotlyJSONEncoder

_LAYOUT = dict(margin=dict(l=60, r=20, t=40, b=50), height=360, template="plotly_white")


def _json(fig: go.Figure) -> str:
    return json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder)


def device_maps(calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The maps a person checks an array by, from one calibration's per-device statistics: ``yield``
    (1 where the device is readable and not stuck), ``window`` (g_max / g_min) and ``stuck`` (+1 stuck
    on, -1 stuck off). Only those the statistics allow."""
    maps: dict[str, np.ndarray] = {}
    g_min, g_max = calibration.get("g_min_s"), calibration.get("g_max_s")
    on, off = calibration.get("stuck_on"), calibration.get("stuck_off")
    if on is not None and off is not None:
        stuck = np.where(on > 0.5, 1.0, np.where(off > 0.5, -1.0, 0.0))
        stuck[np.isnan(on) & np.isnan(off)] = np.nan
        maps["stuck"] = stuck
        bad = (stuck != 0) | np.isnan(stuck)
        unreadable = calibration.get("unreadable")
        if unreadable is not None:
            bad |= unreadable > 0.5
        maps["yield"] = np.where(bad, 0.0, 1.0)
    if g_min is not None and g_max is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            maps["window"] = np.where((g_min > 0) & np.isfinite(g_max), g_max / g_min, np.nan)
    return maps


_MAP_STYLE = {"yield": ("usable", [[0, "#c0392b"], [1, "#27ae60"]]),
              "window": ("g_max / g_min", "Viridis"),
              "stuck": ("+1 on, -1 off", [[0, "#2c3e50"], [0.5, "#ecf0f1"], [1, "#e67e22"]])}


def heatmap(name: str, grid: np.ndarray, title: str) -> str:
    label, scale = _MAP_STYLE.get(name, (name, "Viridis"))
    z = np.where(np.isfinite(grid), grid, None).tolist()
    fig = go.Figure(go.Heatmap(z=z, colorscale=scale, colorbar=dict(title=label),
                               hovertemplate="row %{y}, col %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, **_LAYOUT)
    fig.update_yaxes(autorange="reversed", title="row", scaleanchor="x")
    fig.update_xaxes(title="column")
    return _json(fig)


def trend(rows: Sequence[dict[str, Any]], quantity: str, unit: str | None) -> str:
    labels = [f"run {r['run_id']}" + (f" ({r['status']})" if r.get("status") else "") for r in rows]
    fig = go.Figure(go.Scatter(x=[r["started_at"] for r in rows], y=[r["value"] for r in rows],
                               mode="lines+markers", text=labels,
                               hovertemplate="%{text}<br>%{x}<br>%{y}<extra></extra>"))
    fig.update_layout(title=f"{quantity}" + (f" ({unit})" if unit else ""), **_LAYOUT)
    fig.update_xaxes(title="run started (UTC)")
    return _json(fig)


def loop_accuracy(rows: Sequence[dict[str, Any]]) -> str:
    """Digital against on-array accuracy of every evaluation on an array, over time."""
    fig = go.Figure()
    times = [r["recorded_at"] for r in rows]
    hover = [[r["run_id"], r["split"], r["time_s"], "fine-tuned" if r["finetuned"] else "as deployed"] for r in rows]
    template = "run %{customdata[0]}, %{customdata[1]} split, %{customdata[2]:.3g} s after programming, " \
               "%{customdata[3]}<br>%{y:.2%}<extra></extra>"
    fig.add_trace(go.Scatter(x=times, y=[r["digital_accuracy"] for r in rows], mode="markers", name="digital",
                             customdata=hover, hovertemplate=template))
    fig.add_trace(go.Scatter(x=times, y=[r["crossbar_accuracy"] for r in rows], mode="markers", name="on the array",
                             customdata=hover, hovertemplate=template))
    fig.update_layout(title="accuracy: digital and on the array", **_LAYOUT)
    fig.update_yaxes(tickformat=".0%", title="accuracy")
    fig.update_xaxes(title="evaluated (UTC)")
    return _json(fig)


def png(figure: Any) -> bytes:
    """A matplotlib Figure (made without pyplot, whose global state the server's threads would share)
    as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()
