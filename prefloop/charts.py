"""Plotly figures as plain dicts ({"data": [...], "layout": {...}}): the base layout and
the label-count chart that the progress page and each annotator's /me/ page share.
Pages hand them to static/prefloop/charts.js through `json_script` (templates/with_charts.html)."""

from __future__ import annotations

from datetime import date

LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 300, "legend": {"orientation": "h"},
          "font": {"size": 12}}


def figure(title: str, data: list[dict], **layout) -> dict:
    """A chart; one with no points says so instead of drawing empty axes (plotly's
    default range for an empty date axis is the year 2000)."""
    if not any(series.get("y") or series.get("x") for series in data):
        layout = {**layout, "xaxis": {"visible": False}, "yaxis": {"visible": False}, "shapes": [],
                  "annotations": [{"text": "Nothing to show yet", "showarrow": False, "xref": "paper",
                                   "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 14, "color": "#6b7280"}}]}
    return {"data": data, "layout": {**LAYOUT, "title": {"text": title}, **layout}}


def labels_per_day(days: list[date], per_annotator: dict[str, list[int]], title: str) -> dict:
    """Stacked bars: one series per annotator, one bar per day."""
    x = [day.isoformat() for day in days]
    data = [{"type": "bar", "name": name, "x": x, "y": counts} for name, counts in per_annotator.items()]
    return figure(title, data, barmode="stack", xaxis={"type": "date"})
