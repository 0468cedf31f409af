"""Formatting of the progress pages' numbers."""

from __future__ import annotations

from django import template

from training.ml.rating import WinRate

register = template.Library()


@register.filter
def win_rate(rate: WinRate | None) -> str:
    """0.62 [0.48, 0.75] (18–3–9): rate, 95% interval, wins–ties–losses."""
    if rate is None or rate.rate is None:
        return "–"
    return f"{rate.rate:.2f} [{rate.low:.2f}, {rate.high:.2f}] ({rate.wins}–{rate.ties}–{rate.losses})"


@register.filter
def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    value = round(value)
    return f"{value // 60} min {value % 60} s" if value >= 60 else f"{value} s"
