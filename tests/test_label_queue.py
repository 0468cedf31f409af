from __future__ import annotations

import contextlib
import random
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling import queue_sql, services
from labeling.models import Assignment, Comparison, Label
from labeling.services import LabelError, LabelInput

pytestmark = pytest.mark.django_db
ON_SQLITE = connection.vendor == "sqlite"


def test_two_annotators_never_get_the_same_comparison(people, make_comparison):
    first, second = make_comparison(), make_comparison()
    got_ann = services.next_comparison_for(people.annotator)
    got_otto = services.next_comparison_for(people.outsider)
    assert {got_ann, got_otto} == {first, second}


def test_a_reload_returns_the_comparison_already_leased(people, make_comparison):
    make_comparison(), make_comparison()
    first = services.next_comparison_for(people.annotator)
    assert services.next_comparison_for(people.annotator) == first
    assert Assignment.objects.filter(annotator=people.annotator).count() == 1


def test_an_expired_lease_frees_the_comparison(people, make_comparison):
    only = make_comparison()
    assert services.next_comparison_for(people.annotator) == only
    assert services.next_comparison_for(people.outsider) is None
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.next_comparison_for(people.outsider) == only


def test_overlap_comparisons_go_to_several_annotators(people, make_comparison):
    overlapped = make_comparison(labels_needed=2)
    assert services.next_comparison_for(people.annotator) == overlapped
    assert services.next_comparison_for(people.outsider) == overlapped
    assert services.next_comparison_for(people.researcher) is None


def test_overlap_share_setting_decides_labels_needed(settings, people, make_comparison):
    settings.PREFLOOP_OVERLAP_SHARE = 1.0
    settings.PREFLOOP_OVERLAP_ANNOTATORS = 3
    assert make_comparison().labels_needed == 3
    settings.PREFLOOP_OVERLAP_SHARE = 0.0
    assert make_comparison().labels_needed == 1


def test_higher_priority_is_served_first(people, make_comparison):
    make_comparison(priority=0.1)
    urgent = make_comparison(priority=5.0)
    assert services.next_comparison_for(people.annotator) == urgent


def test_a_labeled_comparison_leaves_the_queue(people, make_comparison):
    comparison = make_comparison()
    services.next_comparison_for(people.annotator)
    services.submit_label(people.annotator, LabelInput(comparison.pk, "a"))
    comparison.refresh_from_db()
    assert comparison.label_count == 1
    assert services.next_comparison_for(people.outsider) is None
    assert not Assignment.objects.exists()


def test_a_skip_does_not_count_but_is_not_served_again_to_the_same_person(people, make_comparison):
    comparison = make_comparison()
    services.next_comparison_for(people.annotator)
    services.submit_label(people.annotator, LabelInput(comparison.pk, "skip"))
    comparison.refresh_from_db()
    assert comparison.label_count == 0
    assert services.next_comparison_for(people.annotator) is None
    assert services.next_comparison_for(people.outsider) == comparison


def test_a_double_submitted_label_is_stored_once(people, make_comparison):
    comparison = make_comparison()
    services.next_comparison_for(people.annotator)
    first, created_first = services.submit_label(people.annotator, LabelInput(comparison.pk, "a", strength=2))
    again, created_again = services.submit_label(people.annotator, LabelInput(comparison.pk, "b"))
    assert created_first and not created_again
    assert again.pk == first.pk and again.choice == "a"
    assert Label.objects.count() == 1
    comparison.refresh_from_db()
    assert comparison.label_count == 1


def test_undo_deletes_the_last_label_and_serves_its_comparison_again(people, make_comparison):
    first, second, third = make_comparison(), make_comparison(), make_comparison()
    for comparison, choice in ((first, "a"), (second, "b")):
        assert services.next_comparison_for(people.annotator) == comparison
        services.submit_label(people.annotator, LabelInput(comparison.pk, choice))
    assert services.next_comparison_for(people.annotator) == third  # leased, on screen
    undone = services.undo_last_label(people.annotator)
    assert undone == second
    assert list(Label.objects.values_list("comparison_id", flat=True)) == [first.pk]
    assert services.next_comparison_for(people.annotator) == second
    second.refresh_from_db()
    assert second.label_count == 0


def test_undo_with_nothing_to_undo_returns_none(people):
    assert services.undo_last_label(people.annotator) is None


def test_undoing_a_skip_is_refused_once_the_comparison_went_to_someone_else(people, make_comparison):
    """A skip leaves the comparison's place open: if someone holds it now, giving it back
    to the person who skipped would let two people label what needs one label."""
    taken, free = make_comparison(labels_needed=1), make_comparison(labels_needed=1)
    assert services.next_comparison_for(people.annotator) == taken
    services.submit_label(people.annotator, LabelInput(taken.pk, "skip"))
    assert services.next_comparison_for(people.outsider) == taken
    with pytest.raises(services.UndoRefused, match="went to someone else"):
        services.undo_last_label(people.annotator)
    assert Label.objects.filter(annotator=people.annotator, choice="skip").count() == 1

    # With nobody holding its place, a skip is undone like any label.
    assert services.next_comparison_for(people.annotator) == free
    services.submit_label(people.annotator, LabelInput(free.pk, "skip"))
    assert services.undo_last_label(people.annotator) == free
    assert services.next_comparison_for(people.annotator) == free


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (LabelInput(0, "a"), "does not exist"),
        (LabelInput(None, "left"), "not valid"),
        (LabelInput(None, "ranking", ranking=[0, 1]), "not valid"),
        (LabelInput(None, "a", strength=5), "strength"),
        (LabelInput(None, "a", rationale="x" * 2001), "rationale"),
    ],
)
def test_invalid_labels_are_refused_and_store_nothing(people, make_comparison, label, message):
    comparison = make_comparison()
    if label.comparison_id is None:
        label = LabelInput(comparison.pk, label.choice, label.ranking, label.strength, label.rationale)
    with pytest.raises(LabelError, match=message):
        services.submit_label(people.annotator, label)
    assert not Label.objects.exists()


def test_ranking_of_three_is_stored_and_expands_to_all_pairs(people, make_comparison):
    comparison = make_comparison(texts=("x", "y", "z"))
    with pytest.raises(LabelError, match="each of the positions"):
        services.submit_label(people.annotator, LabelInput(comparison.pk, "ranking", ranking=[0, 0, 1]))
    services.next_comparison_for(people.annotator)
    label, _ = services.submit_label(people.annotator, LabelInput(comparison.pk, "ranking", ranking=[2, 0, 1]))
    shown = comparison.ordered_completions()
    pairs = [(chosen.text, rejected.text) for chosen, rejected in label.preference_pairs(shown)]
    best, middle, worst = shown[2].text, shown[0].text, shown[1].text
    assert pairs == [(best, middle), (best, worst), (middle, worst)]


def test_strength_is_dropped_from_a_tie_and_active_time_is_clamped(people, make_comparison):
    comparison = make_comparison()
    services.next_comparison_for(people.annotator)
    label, _ = services.submit_label(
        people.annotator, LabelInput(comparison.pk, "tie", strength=3, active_seconds=99_999)
    )
    assert label.strength is None
    assert label.active_seconds == services.MAX_ACTIVE_SECONDS


def test_display_order_is_shuffled_across_comparisons(people, make_comparison):
    orders = set()
    for seed in range(12):
        comparison = make_comparison(texts=("alpha", "beta"), seed=seed)
        orders.add(tuple(c.text for c in comparison.ordered_completions()))
    assert orders == {("alpha", "beta"), ("beta", "alpha")}


def test_counts_show_own_labels_and_queue(people, make_comparison):
    first, _ = make_comparison(), make_comparison()
    assert services.next_comparison_for(people.annotator) == first
    services.submit_label(people.annotator, LabelInput(first.pk, "b"))
    assert services.annotator_counts(people.annotator) == {"labeled": 1, "queue": 1}
    assert services.annotator_counts(people.outsider) == {"labeled": 0, "queue": 1}


def test_random_interleaving_keeps_label_count_consistent(people, make_comparison):
    """Submit, duplicate, skip and undo in a random order; the denormalized count must
    always equal the number of non-skip labels. (Leases and undo's limits are not the
    subject here: test_label_rules.py.)"""
    rng = random.Random(7)
    comparisons = [make_comparison(labels_needed=2) for _ in range(6)]
    annotators = [people.annotator, people.outsider, people.researcher]
    for _ in range(120):
        who = rng.choice(annotators)
        if rng.random() < 0.2:
            with contextlib.suppress(services.UndoRefused):
                services.undo_last_label(who)
        else:
            services.submit_label(who, LabelInput(rng.choice(comparisons).pk, rng.choice(["a", "b", "tie", "skip"])),
                                  require_lease=False)
    for comparison in Comparison.objects.all():
        assert comparison.label_count == comparison.labels.exclude(choice="skip").count()


def test_a_candidate_leased_by_someone_else_meanwhile_has_no_room(people, make_comparison):
    """The re-check that closes PostgreSQL's snapshot race: a lease committed after the
    candidate query started must make the candidate full."""
    comparison = make_comparison()
    now = timezone.now()
    assert services.has_room_for_another_annotator(comparison, people.annotator, now)
    Assignment.objects.create(comparison=comparison, annotator=people.outsider, expires_at=now + timedelta(minutes=5))
    assert not services.has_room_for_another_annotator(comparison, people.annotator, now)
    assert services.has_room_for_another_annotator(comparison, people.outsider, now)  # their own lease


def test_the_queue_count_may_be_a_few_seconds_old_the_labeled_count_never(people, make_comparison, settings,
                                                                          client, django_capture_on_commit_callbacks):
    """The labeling API's queue count is cached per annotator for
    PREFLOOP_QUEUE_COUNT_MAX_AGE seconds (it walks every open comparison); the count of
    their own labels is always exact."""
    first, second = make_comparison(), make_comparison()
    assert services.annotator_counts(people.annotator, queue_max_age=60) == {"labeled": 0, "queue": 2}
    assert services.next_comparison_for(people.annotator) == first
    with django_capture_on_commit_callbacks(execute=True):
        services.submit_label(people.annotator, LabelInput(first.pk, "a"))
    # Cached, and kept exact for the annotator's own label...
    assert services.annotator_counts(people.annotator, queue_max_age=60) == {"labeled": 1, "queue": 1}
    services.submit_label(people.outsider, LabelInput(second.pk, "a"), require_lease=False)
    # ...but not for someone else's, until it expires.
    assert services.annotator_counts(people.annotator, queue_max_age=60) == {"labeled": 1, "queue": 1}
    assert services.annotator_counts(people.annotator) == {"labeled": 1, "queue": 0}  # exact
    with django_capture_on_commit_callbacks(execute=True):
        services.undo_last_label(people.annotator)
    assert services.annotator_counts(people.annotator, queue_max_age=60) == {"labeled": 0, "queue": 2}
    settings.PREFLOOP_QUEUE_COUNT_MAX_AGE = 0
    client.force_login(people.annotator)
    assert client.post("/label/api/next").json()["counts"] == {"labeled": 0, "queue": 1}  # the undone one is back


@pytest.mark.skipif(not ON_SQLITE, reason="SQLite's query planner")
def test_the_candidate_query_walks_the_open_queue_index(people, make_comparison):
    """The hand-written candidate statement must keep the partial index's condition
    spelled so that SQLite uses it: a rewording that loses it makes every `next` scan
    every comparison ever labeled, and nothing else would notice."""
    make_comparison()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + queue_sql.CANDIDATE_SQL.format(skip=""),
                       queue_sql.candidate_params(people.annotator.pk, timezone.now(), []))
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "USING INDEX comparison_open_queue" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # served in index order, not sorted afterwards


@pytest.mark.skipif(not ON_SQLITE, reason="SQLite's one write lock")
@pytest.mark.django_db(transaction=True)
def test_a_label_holds_the_write_lock_only_for_its_writes(people, make_comparison):
    """Every labeling request of every web process waits for SQLite's write lock, so a
    submit reads the comparison and any earlier label before BEGIN; inside it checks
    the lease, stores the label, counts it and drops the lease."""
    make_comparison()
    comparison = services.next_comparison_for(people.annotator)
    with CaptureQueriesContext(connection) as queries:
        services.submit_label(people.annotator, LabelInput(comparison.pk, "a"))
    statements = [q["sql"] for q in queries.captured_queries]
    begin = next(i for i, sql in enumerate(statements) if sql.startswith("BEGIN"))
    commit = statements.index("COMMIT")
    inside = [sql.split()[0] for sql in statements[begin + 1:commit] if "SAVEPOINT" not in sql]
    assert inside == ["SELECT", "INSERT", "UPDATE", "DELETE"], statements[begin:commit + 1]
    assert begin >= 2  # the comparison and the earlier-label reads came first
    comparison.refresh_from_db()
    assert comparison.label_count == 1 and not Assignment.objects.filter(comparison=comparison).exists()
