"""Inter-annotator agreement on comparisons labelled by more than one person.

Pure functions on plain data (category strings such as "a", "b", "tie"), so the services can
feed them from a query and the tests from literals. Raw agreement alone flatters a skewed label
distribution (if nearly everyone picks "a", pairs agree by chance), hence the kappa beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Agreement:
    """Pairwise agreement pooled over items, with its chance-corrected kappa."""

    items: int
    """Items with at least two judgements (the only ones that can agree or disagree)."""
    pairs: int
    """Pairs of judgements within the same item, summed over items."""
    agreeing: int
    """Pairs that gave the same category."""
    rate: float | None
    """agreeing / pairs; None when there are no pairs."""
    kappa: float | None
    """(P_o − P_e) / (1 − P_e); None when there are no pairs or every judgement is one category."""


def agreement(items: Iterable[Sequence[str]]) -> Agreement:
    """Agreement over `items`, each the categories different annotators gave one comparison.

    Items with fewer than two judgements are skipped. Observed agreement P_o pools pairs: an item
    judged n_i times contributes C(n_i, 2) pairs. Chance agreement P_e = Σ_c p_c², p_c being the
    share of category c among all judgements of the counted items. This is Fleiss' kappa with
    pooled pairs, so items may have different numbers of annotators.
    """
    counted = 0
    pairs = 0
    agreeing = 0
    categories: Counter[str] = Counter()
    for judgements in items:
        if len(judgements) < 2:
            continue
        counted += 1
        pairs += _pairs(len(judgements))
        item_counts = Counter(judgements)
        agreeing += sum(_pairs(count) for count in item_counts.values())
        categories.update(item_counts)
    if pairs == 0:
        return Agreement(counted, 0, 0, None, None)

    observed = agreeing / pairs
    total = sum(categories.values())
    same_category = sum(count * count for count in categories.values())
    # Integer comparison: P_e is exactly 1 only when one category took every judgement.
    if same_category == total * total:
        return Agreement(counted, pairs, agreeing, observed, None)
    chance = same_category / (total * total)
    return Agreement(counted, pairs, agreeing, observed, (observed - chance) / (1 - chance))


def agreement_with_others(items: Iterable[tuple[str, Sequence[str]]]) -> tuple[int, int]:
    """(agreeing, total) over pairs of one annotator's category and another annotator's on the
    same comparison; each item is (mine, the others' categories)."""
    agreeing = 0
    total = 0
    for mine, others in items:
        total += len(others)
        agreeing += sum(1 for other in others if other == mine)
    return agreeing, total


def _pairs(n: int) -> int:
    return n * (n - 1) // 2
