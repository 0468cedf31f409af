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


@register.filter
def method_title(name: str) -> str:
    """The registry's title of a method (`ppo` → PPO); empty for a base version."""
    from training.ml.methods import METHODS
    from training.models import OUTSIDE_METHOD

    if name == OUTSIDE_METHOD:
        return "outside trainer"
    return METHODS[name].title if name in METHODS else (name or "base")


@register.filter
def recipe_title(name: str) -> str:
    from training.recipes import RECIPES

    return RECIPES[name].title if name in RECIPES else name

