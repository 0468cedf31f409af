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
