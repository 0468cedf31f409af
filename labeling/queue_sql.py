"""The labeling queue's hot statements, written as SQL.

Every `next` and `submit` takes SQLite's one write lock (BEGIN IMMEDIATE), so at
saturation the time a request holds it bounds the throughput of all web processes
together. Profiled, most of that time was the ORM composing its queries in Python (with
other threads of the process competing for the GIL meanwhile), not SQLite running them.
These are the statements the ORM composed, written out once; each runs as is on SQLite and on
PostgreSQL (the candidate query adds its row lock there). services.py keeps the rules;
this module only speaks SQL, and tests/test_label_queue.py exercises it through them.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from labeling.models import Assignment, Comparison, ComparisonItem, Label, LabeledBy

COMPARISON = Comparison._meta.db_table
ITEM = ComparisonItem._meta.db_table
LABEL = Label._meta.db_table
LEASE = Assignment._meta.db_table
RUN = Comparison._meta.get_field("run").related_model._meta.db_table  # training.Run, without importing it


def _stamp(moment: datetime):
    """A datetime as the ORM stores it (SQLite compares the stored text)."""
    return connection.ops.adapt_datetimefield_value(moment)


def _one(sql: str, params: list) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def held_lease(annotator_id: int, now: datetime) -> int | None:
    """The comparison of the annotator's oldest live lease that they have not answered."""
    row = _one(
        f"""SELECT a.comparison_id FROM {LEASE} a
            WHERE a.annotator_id = %s AND a.expires_at > %s
              AND NOT EXISTS (SELECT 1 FROM {LABEL} l
                              WHERE l.comparison_id = a.comparison_id AND l.annotator_id = %s)
            ORDER BY a.created_at LIMIT 1""",
        [annotator_id, _stamp(now), annotator_id],
    )
    return row[0] if row else None


# `label_count < labels_needed` is the condition of the partial index comparison_open_queue:
# with it stated (although the lease condition below implies it), the planner walks that
# index in queue order and stops at the first row that qualifies, instead of scanning
# every comparison ever labeled (tests/test_label_queue.py checks SQLite's plan).
CANDIDATE_SQL = f"""SELECT c.id FROM {COMPARISON} c
    INNER JOIN {RUN} r ON r.id = c.run_id
    WHERE c.label_count < (c.labels_needed) AND r.labeled_by = %s {{skip}}
      AND NOT EXISTS (SELECT 1 FROM {LABEL} l WHERE l.comparison_id = c.id AND l.annotator_id = %s)
      AND c.labels_needed > c.label_count + (
          SELECT COUNT(*) FROM {LEASE} a
          WHERE a.comparison_id = c.id AND a.expires_at > %s AND a.annotator_id <> %s)
    ORDER BY c.priority DESC, c.id
    LIMIT 1"""


def candidate_params(annotator_id: int, now: datetime, passed_over: list[int]) -> list:
    return [LabeledBy.PEOPLE, *passed_over, annotator_id, _stamp(now), annotator_id]


def first_candidate(annotator_id: int, now: datetime, passed_over: list[int], lock_row: bool) -> int | None:
    """The first comparison in queue order (priority, then age) of a run that people
    label, that still wants a label, that this annotator has not answered, and that has
    room for one more live lease besides theirs. `lock_row` takes the row with FOR UPDATE
    SKIP LOCKED (PostgreSQL), so concurrent requests pass over it instead of waiting."""
    skip = f"AND c.id NOT IN ({', '.join(['%s'] * len(passed_over))})" if passed_over else ""
    sql = CANDIDATE_SQL.format(skip=skip) + (" FOR UPDATE OF c SKIP LOCKED" if lock_row else "")
    row = _one(sql, candidate_params(annotator_id, now, passed_over))
    return row[0] if row else None


def room_for_another_annotator(comparison_id: int, annotator_id: int, now: datetime) -> bool:
    """Whether labels plus other people's live leases are still below what it needs."""
    row = _one(
        f"""SELECT c.labels_needed > c.label_count + (
                SELECT COUNT(*) FROM {LEASE} a
                WHERE a.comparison_id = c.id AND a.expires_at > %s AND a.annotator_id <> %s)
            FROM {COMPARISON} c WHERE c.id = %s""",
        [_stamp(now), annotator_id, comparison_id],
    )
    return bool(row and row[0])


def lock_comparison(comparison_id: int) -> None:
    """Hold the comparison's row until the transaction ends (PostgreSQL): the queue
    takes the same lock before it leases the comparison to anyone."""
    _one(f"SELECT id FROM {COMPARISON} WHERE id = %s FOR UPDATE", [comparison_id])


def take_lease(comparison_id: int, annotator_id: int, created_at: datetime, expires_at: datetime,
               returned: bool = False) -> None:
    """Lease the comparison to the annotator (one row per pair: a lease they already
    held is replaced in place). The queue serves a person's leases oldest `created_at` first."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {LEASE} (comparison_id, annotator_id, expires_at, created_at, returned)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (comparison_id, annotator_id)
                DO UPDATE SET expires_at = excluded.expires_at, created_at = excluded.created_at,
                              returned = excluded.returned""",
            [comparison_id, annotator_id, _stamp(expires_at), _stamp(created_at), returned],
        )


def lease_is_live(comparison_id: int, annotator_id: int, now: datetime) -> bool | None:
    """Whether the annotator's lease on the comparison is still running at `now`; None
    when they hold none."""
    row = _one(f"SELECT expires_at > %s FROM {LEASE} WHERE comparison_id = %s AND annotator_id = %s",
               [_stamp(now), comparison_id, annotator_id])
    return None if row is None else bool(row[0])


def label_target(comparison_id: int) -> tuple[int, int] | None:
    """(run id, number of completions) of a comparison, or None when it does not exist."""
    return _one(
        f"SELECT c.run_id, (SELECT COUNT(*) FROM {ITEM} i WHERE i.comparison_id = c.id) FROM {COMPARISON} c "
        "WHERE c.id = %s",
        [comparison_id],
    )


def count_label_and_drop_lease(comparison_id: int, annotator_id: int, counts_as_label: bool) -> None:
    """What storing a label changes besides the label row: the comparison's count and the lease."""
    with connection.cursor() as cursor:
        if counts_as_label:
            cursor.execute(f"UPDATE {COMPARISON} SET label_count = label_count + 1 WHERE id = %s", [comparison_id])
        cursor.execute(f"DELETE FROM {LEASE} WHERE comparison_id = %s AND annotator_id = %s",
                       [comparison_id, annotator_id])
