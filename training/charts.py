"""Plotly figures for the progress pages (plain dicts; see prefloop/charts.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from prefloop.charts import figure
from training.ml.rating import WinRate

if TYPE_CHECKING:
    from training.games import Ranking


class WinRateRow(Protocol):
    """What a chart reads of a row of training/pages.py's win-rate table (which imports
    this module, so the row is described here rather than imported)."""

    label: str
    human_vs_base: WinRate
    human_vs_previous: WinRate
    rm_vs_base: WinRate
    rm_vs_previous: WinRate


def labels_per_annotator(rows: list[dict]) -> dict:
    data = [{"type": "bar", "x": [row["username"] for row in rows], "y": [row["labels"] for row in rows],
             "name": "labels"}]
    return figure("Labels per annotator", data)


def reward_model_accuracy(reward_models) -> dict:
    """One line per run: held-out accuracy of each reward-model version."""
    by_run: dict[str, list] = {}
    for rm in reward_models:
        if rm.heldout_accuracy is not None:
            by_run.setdefault(rm.run.name, []).append(rm)
    data = [{"type": "scatter", "mode": "lines+markers", "name": name,
             "x": [f"v{rm.number}" for rm in rms], "y": [rm.heldout_accuracy for rm in rms],
             "text": [f"{rm.heldout_pairs} held-out pairs" for rm in rms]} for name, rms in by_run.items()]
    return figure("Reward model held-out accuracy", data, yaxis={"range": [0, 1]}, shapes=[chance_line(0.5)])


def method_curve(curves: list[dict], key: str, title: str, step_label: str) -> dict:
    """One trace per version that logged `key`."""
    data = [{"type": "scatter", "mode": "lines+markers", "name": curve["name"], "x": curve[key]["x"],
             "y": curve[key]["y"]} for curve in curves if curve[key]["x"]]
    return figure(title, data, xaxis={"title": {"text": step_label}})


def interval_bars(rates: list[WinRate]) -> dict:
    """Plotly error bars from a rate and its interval."""
    return {"type": "data", "symmetric": False,
            "array": [(r.high - r.rate) if r.rate is not None else 0 for r in rates],
            "arrayminus": [(r.rate - r.low) if r.rate is not None else 0 for r in rates]}


def win_rates(rows: list[WinRateRow]) -> dict:
    series = [("human_vs_base", "people: vs base"), ("human_vs_previous", "people: vs previous"),
              ("rm_vs_base", "reward model: vs base"), ("rm_vs_previous", "reward model: vs previous")]
    x = [row.label for row in rows]
    data = []
    for key, name in series:
        rates = [getattr(row, key) for row in rows]
        data.append({"type": "bar", "name": name, "x": x, "y": [r.rate for r in rates],
                     "error_y": interval_bars(rates), "text": [f"n={r.n}" for r in rates]})
    return figure("Win rate with 95% interval (ties count half)", data, barmode="group", yaxis={"range": [0, 1]},
                  shapes=[chance_line(0.5)])


BRADLEY_TERRY_TITLE = "Bradley–Terry strength vs the run's base, or its anchor (log-odds, 95% interval)"


def bradley_terry(rankings: list[Ranking], title: str = BRADLEY_TERRY_TITLE) -> dict:
    """One series per run: each player's strength against the run's anchor (its base),
    versions by number, then outside systems by name."""
    data = []
    for ranking in rankings:
        ordered = sorted(ranking.strengths, key=lambda s: (1, s.player, 0) if s.player in ranking.systems
                         else (0, "", int(s.player.lstrip("v"))))
        data.append({"type": "scatter", "mode": "markers", "name": plain_text(ranking.run.name),
                     "x": [plain_text(s.player) for s in ordered], "y": [s.score for s in ordered],
                     "error_y": {"type": "data", "symmetric": False, "array": [s.high - s.score for s in ordered],
                                 "arrayminus": [s.score - s.low for s in ordered]}})
    return figure(title, data, shapes=[chance_line(0.0)])


def plain_text(text: str) -> str:
    """Text that Plotly shows as written: it reads a few HTML tags (<a href>, <b>, <br>...)
    in labels, so names from outside (system names) have their markup escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chance_line(y: float) -> dict:
    return {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
            "line": {"dash": "dot", "color": "#888", "width": 1}}

