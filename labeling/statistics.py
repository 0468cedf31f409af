"""Who labeled what, how fast, and how much annotators agree: the numbers behind the
progress page's label charts and each annotator's /me/ page.

Only people count: labels whose origin is not "human" (simulated annotators, imported
datasets) are left out of every statistic here, and skips are not labels.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import date, datetime, time, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from labeling.agreement import Agreement, agreement, agreement_with_others
from labeling.models import Label


def human_labels() -> QuerySet[Label]:
    return Label.objects.filter(origin=Label.Origin.HUMAN).exclude(choice=Label.Choice.SKIP)


def judgement_of(choice: str, ranking: list[int] | None) -> str:
    """What two labels of one comparison must share to agree: the same choice (left,
    right, tie, both bad) or, for a K-way ranking, the same best completion. Positions
    are the comparison's stored display order, the same for every annotator."""
    return f"best:{ranking[0]}" if choice == Label.Choice.RANKING and ranking else choice


def judgements_by_comparison(labels: QuerySet[Label]) -> dict[int, list[tuple[int, str]]]:
    """{comparison id: [(annotator id, judgement), ...]} for comparisons with 2+ labels."""
    overlapped = labels.values("comparison").annotate(n=Count("id")).filter(n__gte=2).values("comparison")
    grouped: dict[int, list[tuple[int, str]]] = defaultdict(list)
    rows = labels.filter(comparison__in=overlapped).values_list("comparison_id", "annotator_id", "choice", "ranking")
    for comparison_id, annotator_id, choice, ranking in rows:
        grouped[comparison_id].append((annotator_id, judgement_of(choice, ranking)))
    return grouped


def overlap_agreement(grouped: dict[int, list[tuple[int, str]]]) -> Agreement:
    """Agreement between people on the comparisons several of them labeled (`grouped`:
    judgements_by_comparison of people's labels)."""
    return agreement([judgement for _, judgement in group] for group in grouped.values())


def agreement_by_annotator(grouped: dict[int, list[tuple[int, str]]]) -> dict[int, tuple[int, int]]:
    """{annotator id: (agreeing, total)} pairs of their labels with other people's, in one
    pass over the overlapped comparisons."""
    items: dict[int, list[tuple[str, list[str]]]] = defaultdict(list)
    for group in grouped.values():
        for who, judgement in group:
            items[who].append((judgement, [other for someone, other in group if someone != who]))
    return {who: agreement_with_others(theirs) for who, theirs in items.items()}


def median_seconds(seconds: list[float]) -> float | None:
    """Median active time per label; labels sent without a timing (the API, imports)
    have 0 and would drag it down, so they are left out."""
    timed = [s for s in seconds if s > 0]
    return statistics.median(timed) if timed else None


def labels_per_day(days: int = 30, labels: QuerySet[Label] | None = None) -> tuple[list[date], dict[str, list[int]]]:
    """The last `days` days (oldest first) and, per annotator, their labels on each
    (of `labels`, by default every person's)."""
    today = timezone.localdate()
    axis = [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    index = {day: i for i, day in enumerate(axis)}
    counts: dict[str, list[int]] = {}
    rows = (
        # A datetime bound, not created_at__date: SQLite casts dates in Python, row by row.
        (human_labels() if labels is None else labels)
        .filter(created_at__gte=timezone.make_aware(datetime.combine(axis[0], time.min)))
        .annotate(day=TruncDate("created_at")).values_list("day", "annotator__username").annotate(n=Count("id"))
    )
    for day, username, n in rows:
        if day in index:  # a label dated after today (a skewed clock, an import) is left out
            counts.setdefault(username, [0] * days)[index[day]] += n
    return axis, dict(sorted(counts.items()))


def annotator_table(grouped: dict[int, list[tuple[int, str]]]) -> list[dict]:
    """One row per person who labeled: labels, skips, median time, agreement (`grouped`:
    judgements_by_comparison of people's labels)."""
    agreements = agreement_by_annotator(grouped)
    seconds: dict[int, list[float]] = defaultdict(list)
    for annotator_id, active in human_labels().values_list("annotator_id", "active_seconds"):
        seconds[annotator_id].append(active)
    skips = dict(
        Label.objects.filter(origin=Label.Origin.HUMAN, choice=Label.Choice.SKIP)
        .values_list("annotator_id").annotate(n=Count("id"))
    )
    rows = []
    people = human_labels().values_list("annotator_id", "annotator__username").distinct()
    for annotator_id, username in sorted(set(people), key=lambda row: row[1]):
        agreeing, compared = agreements.get(annotator_id, (0, 0))
        rows.append({
            "username": username, "labels": len(seconds[annotator_id]), "skips": skips.get(annotator_id, 0),
            "median_seconds": median_seconds(seconds[annotator_id]),
            "agreeing": agreeing, "compared": compared, "agreement": agreeing / compared if compared else None,
        })
    return rows


def annotator_summary(annotator: AbstractBaseUser) -> dict:
    """What /me/ shows one annotator about their own work (nobody else's labels)."""
    mine = human_labels().filter(annotator=annotator)
    today = timezone.localdate()
    shared = human_labels().filter(comparison__in=mine.values("comparison"))
    agreeing, compared = agreement_by_annotator(judgements_by_comparison(shared)).get(annotator.pk, (0, 0))
    by_choice = dict(mine.values_list("choice").annotate(n=Count("id")))
    axis, per_day = labels_per_day(days=14, labels=mine)
    return {
        "labels": mine.count(),
        "today": mine.filter(created_at__date=today).count(),
        "last_7_days": mine.filter(created_at__date__gt=today - timedelta(days=7)).count(),
        "skips": Label.objects.filter(annotator=annotator, choice=Label.Choice.SKIP).count(),
        "by_choice": [(Label.Choice(choice).label, by_choice[choice]) for choice in Label.Choice.values
                      if choice in by_choice],
        "median_seconds": median_seconds(list(mine.values_list("active_seconds", flat=True))),
        "agreeing": agreeing, "compared": compared, "agreement": agreeing / compared if compared else None,
        "days": axis, "per_day": per_day.get(annotator.get_username(), [0] * len(axis)),
    }
