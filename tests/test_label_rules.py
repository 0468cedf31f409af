"""The rules a label must follow (issue 12): it comes from the queue (a lease the
submitter holds), undo goes back one recent label that nothing has used yet, and no
request body, however hostile, answers 500."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import Assignment, Comparison, Label
from labeling.services import LabelInput, LeaseError, UndoRefused, next_comparison_for, submit_label, undo_last_label

pytestmark = pytest.mark.django_db


def test_a_person_labels_only_what_the_queue_gave_them(people, make_comparison, django_user_model):
    other = django_user_model.objects.create_user("bea", password="pw-bea-123")
    mine, theirs, nobodys = (make_comparison(priority=p) for p in (3, 2, 1))
    assert next_comparison_for(people.annotator) == mine
    assert next_comparison_for(other) == theirs
    with pytest.raises(LeaseError, match="was not given to you"):
        submit_label(people.annotator, LabelInput(theirs.pk, "a"))  # leased to someone else
    with pytest.raises(LeaseError, match="was not given to you"):
        submit_label(people.annotator, LabelInput(nobodys.pk, "a"))  # skipping the queue
    assert not Label.objects.filter(annotator=people.annotator).exists()
    label, created = submit_label(people.annotator, LabelInput(mine.pk, "a"))
    assert created and not Assignment.objects.filter(annotator=people.annotator).exists()
    # A double submit is still the first label, though the lease is gone by now.
    assert submit_label(people.annotator, LabelInput(mine.pk, "b")) == (label, False)


def test_an_expired_lease_counts_only_while_nobody_else_took_the_comparison(people, make_comparison,
                                                                            django_user_model):
    other = django_user_model.objects.create_user("bea", password="pw-bea-123")
    slow, taken = make_comparison(priority=2), make_comparison(priority=1)
    assert next_comparison_for(people.annotator) == slow
    Assignment.objects.filter(annotator=people.annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    _, created = submit_label(people.annotator, LabelInput(slow.pk, "a"))  # nobody took it: kept
    assert created

    assert next_comparison_for(people.annotator) == taken
    Assignment.objects.filter(annotator=people.annotator).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert next_comparison_for(other) == taken  # the lease ran out and the queue gave it away
    with pytest.raises(LeaseError, match="expired and it went to someone else"):
        submit_label(people.annotator, LabelInput(taken.pk, "a"))
    submit_label(other, LabelInput(taken.pk, "b"))
    taken.refresh_from_db()
    assert taken.label_count == taken.labels_needed == 1


def test_simulated_labels_need_no_lease(people, make_comparison):
    comparison = make_comparison()
    _, created = submit_label(people.annotator, LabelInput(comparison.pk, "a"), origin=Label.Origin.SIMULATED)
    assert created


def test_the_api_refuses_a_label_without_a_lease_with_409_and_next_is_a_post(client, people, make_comparison):
    comparison = make_comparison()
    client.force_login(people.annotator)
    refused = client.post("/label/api/submit", {"comparison_id": comparison.pk, "choice": "a"},
                          content_type="application/json")
    assert refused.status_code == 409 and "not given to you" in refused.json()["error"]
    assert client.get("/label/api/next").status_code == 405  # taking a lease is a state change
    served = client.post("/label/api/next").json()["comparison"]
    assert served["id"] == comparison.pk
    ok = client.post("/label/api/submit", {"comparison_id": comparison.pk, "choice": "a"},
                     content_type="application/json")
    assert ok.status_code == 200 and Comparison.objects.get(pk=comparison.pk).label_count == 1


def label_from_queue(annotator, choice="a") -> Label:
    comparison = next_comparison_for(annotator)
    return submit_label(annotator, LabelInput(comparison.pk, choice))[0]


def test_undo_goes_back_one_label_only(people, make_comparison):
    for priority in (3, 2, 1):
        make_comparison(priority=priority)
    first, second = label_from_queue(people.annotator), label_from_queue(people.annotator)
    assert undo_last_label(people.annotator) == second.comparison
    with pytest.raises(UndoRefused, match="answer the comparison you took back first"):
        undo_last_label(people.annotator)
    assert Label.objects.filter(pk=first.pk).exists()
    assert Assignment.objects.filter(annotator=people.annotator).count() == 1  # not a lease per press
    again = label_from_queue(people.annotator, "b")  # the comparison given back comes first
    assert again.comparison == second.comparison
    assert undo_last_label(people.annotator) == second.comparison  # a new label can be undone again


def test_undo_is_refused_after_the_window(people, make_comparison, settings):
    settings.PREFLOOP_UNDO_SECONDS = 60
    make_comparison()
    label = label_from_queue(people.annotator)
    Label.objects.filter(pk=label.pk).update(created_at=timezone.now() - timedelta(seconds=61))
    with pytest.raises(UndoRefused, match="older than 60 seconds"):
        undo_last_label(people.annotator)
    assert Label.objects.filter(pk=label.pk).exists()


def test_undo_is_refused_for_a_label_a_reward_model_trained_on(people, make_comparison, base_run):
    from training.models import RewardModelVersion

    make_comparison()
    label = label_from_queue(people.annotator)
    RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir="x", weights_dir="x", label_count=1,
                                      last_label_id=label.pk, reward_mean=0.0, reward_std=1.0)
    with pytest.raises(UndoRefused, match="reward model r1 was trained on it"):
        undo_last_label(people.annotator)
    assert Label.objects.filter(pk=label.pk).exists()


def test_the_undo_api_says_why_it_refuses(client, people, make_comparison):
    make_comparison(), make_comparison()
    client.force_login(people.annotator)
    for _ in range(2):
        served = client.post("/label/api/next").json()["comparison"]
        client.post("/label/api/submit", {"comparison_id": served["id"], "choice": "a"},
                    content_type="application/json")
    assert client.post("/label/api/undo").json()["undone"] is True
    refused = client.post("/label/api/undo")
    assert refused.status_code == 409 and "took back" in refused.json()["error"]
    assert Label.objects.filter(annotator=people.annotator).count() == 1


@pytest.mark.parametrize("body", [
    '{"comparison_id": %d, "choice": "a", "active_seconds": NaN}',
    '{"comparison_id": %d, "choice": "a", "active_seconds": Infinity}',
    '{"comparison_id": %d, "choice": "a", "strength": -Infinity}',
    '{"comparison_id": %d, "choice": "a", "rationale": "nul \\u0000 inside"}',
    '{"comparison_id": %d, "choice": "a", "strength": 1e400}',
    '{"comparison_id": %d, "choice": "a", "active_seconds": 1e400}',
    '[%d]',
    '{"comparison_id": %d, "choice": "a", "rationale": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_hostile_bodies_get_400_and_store_nothing(client, people, make_comparison, body):
    comparison = make_comparison()
    client.force_login(people.annotator)
    client.post("/label/api/next")
    response = client.post("/label/api/submit", body.replace("%d", str(comparison.pk)),
                           content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert "malformed label" in response.json()["error"]
    assert not Label.objects.exists()
    json.dumps(response.json())  # the error itself is valid JSON
