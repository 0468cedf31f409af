"""Scripted annotators: a ground-truth preference the loop can be run against without
people, for tests and experiments. Plain functions, no Django.

Each oracle scores a completion; the higher score wins. Like the humans Christiano et
al. (2017) modelled, a simulated annotator answers at random with probability `noise`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

APOLOGY = re.compile(r"\b(sorry|apolog\w*|i'?m unable|i cannot|i can't|as an ai)\b", re.IGNORECASE)
NUMBER = re.compile(r"\d")


def shorter_no_apology(text: str) -> float:
    """Short answers win; an apology or a refusal phrase costs as much as 200 characters."""
    return -len(text) - 200.0 * len(APOLOGY.findall(text))


def concrete_number(text: str) -> float:
    """An answer with a digit in it beats one without; among equals, the shorter wins."""
    return (1000.0 if NUMBER.search(text) else 0.0) - len(text) / 1000.0


def longer(text: str) -> float:
    """The longer answer wins (an ablation: the opposite of what people usually want)."""
    return float(len(text))


def keyword(word: str) -> Callable[[str], float]:
    """More mentions of `word` win (case-insensitive)."""
    pattern = re.compile(re.escape(word), re.IGNORECASE)
    return lambda text: float(len(pattern.findall(text)))


ORACLES: dict[str, Callable[[str], float]] = {
    "shorter_no_apology": shorter_no_apology,
    "concrete_number": concrete_number,
    "longer": longer,
}


def oracle_named(name: str) -> Callable[[str], float]:
    """A built-in oracle, or `keyword:WORD`."""
    if name.startswith("keyword:") and len(name) > len("keyword:"):
        return keyword(name.removeprefix("keyword:"))
    if name not in ORACLES:
        raise ValueError(f"unknown oracle {name!r}; choose one of {', '.join(ORACLES)} or keyword:WORD")
    return ORACLES[name]


@dataclass(frozen=True)
class OracleJudgement:
    choice: str  # "a", "b", "tie" or "ranking"
    ranking: list[int] | None = None


def judge(score: Callable[[str], float], texts: Sequence[str], noise: float, rng: random.Random) -> OracleJudgement:
    """The simulated annotator's label for completions shown in this order."""
    if len(texts) == 2:
        if rng.random() < noise:
            return OracleJudgement(rng.choice(["a", "b"]))
        left, right = score(texts[0]), score(texts[1])
        if left == right:
            return OracleJudgement("tie")
        return OracleJudgement("a" if left > right else "b")
    positions = list(range(len(texts)))
    if rng.random() < noise:
        rng.shuffle(positions)
    else:
        rng.shuffle(positions)  # random order among equal scores
        positions.sort(key=lambda p: score(texts[p]), reverse=True)
    return OracleJudgement("ranking", positions)
