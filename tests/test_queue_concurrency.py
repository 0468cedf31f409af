"""Annotators asking at the same moment, each request on its own database connection.
Meaningful on both backends: SQLite serializes writers with BEGIN IMMEDIATE, PostgreSQL
hands out rows with FOR UPDATE SKIP LOCKED plus a re-check after the lock. Run it
against PostgreSQL with DATABASE_URL=postgres://..."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from labeling import services
from labeling.models import Comparison, Label
from labeling.services import LabelInput

pytestmark = pytest.mark.django_db(transaction=True)

ANNOTATORS = 8
ROUNDS = 5


def test_concurrent_annotators_never_share_a_comparison(django_user_model, make_comparison):
    users = [django_user_model.objects.create_user(f"concurrent-{i}") for i in range(ANNOTATORS)]
    for _ in range(ANNOTATORS * ROUNDS):
        make_comparison()
    start = threading.Barrier(ANNOTATORS)

    def label_in_a_hurry(user) -> list[int]:
        served = []
        try:
            start.wait()
            for _ in range(ROUNDS):
                comparison = services.next_comparison_for(user)
                served.append(comparison.pk)
                services.submit_label(user, LabelInput(comparison.pk, "a"))
        finally:
            connection.close()
        return served

    with ThreadPoolExecutor(ANNOTATORS) as pool:
        served = [pk for batch in pool.map(label_in_a_hurry, users) for pk in batch]

    assert len(served) == len(set(served)) == ANNOTATORS * ROUNDS
    assert Label.objects.count() == ANNOTATORS * ROUNDS
    assert all(c.label_count == 1 for c in Comparison.objects.all())


def test_a_late_label_waits_for_a_lease_being_given_and_is_refused(django_user_model, make_comparison):
    """An annotator whose lease expired submits while the queue is giving the comparison
    to someone else (that request's transaction still open). The late label waits for
    it and is refused, so the comparison never gets more labels than it needs; without
    waiting, PostgreSQL let both in (the late check read the lease count before the
    other lease committed)."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from labeling.models import Assignment
    from labeling.services import LeaseError

    slow, quick = (django_user_model.objects.create_user(name) for name in ("slow", "quick"))
    comparison = make_comparison(labels_needed=1)
    assert services.next_comparison_for(slow).pk == comparison.pk
    Assignment.objects.filter(annotator=slow).update(expires_at=timezone.now() - timedelta(seconds=1))
    holding, release = threading.Event(), threading.Event()

    def give_to_quick() -> int | None:
        try:
            with transaction.atomic():
                taken = services.take_next_lease(quick)
                holding.set()
                release.wait(10)
            return taken
        finally:
            connection.close()

    def late_label() -> str:
        holding.wait(10)
        try:
            services.submit_label(slow, LabelInput(comparison.pk, "a"))
            return "stored"
        except LeaseError as error:
            return str(error)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        taker, late = pool.submit(give_to_quick), pool.submit(late_label)
        assert holding.wait(10)
        wait_until_a_request_waits_for_a_lock()
        release.set()
        assert taker.result() == comparison.pk
        assert "went to someone else" in late.result()
    services.submit_label(quick, LabelInput(comparison.pk, "a"))
    comparison.refresh_from_db()
    assert comparison.label_count == Label.objects.count() == 1


def wait_until_a_request_waits_for_a_lock(timeout: float = 10.0) -> None:
    """PostgreSQL: until a backend waits on a lock (the late label at the comparison's
    row with the fix, at its count update without). SQLite shows no such wait: half a
    second is ample for the late label to reach BEGIN IMMEDIATE and wait there."""
    import time

    if connection.vendor != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError("the late label never waited for a lock")
