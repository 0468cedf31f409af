"""What follows what: the loop's one dispatcher (training/services/loop.py) and the state
transitions that are methods of their rows."""

from __future__ import annotations

import pytest

from labeling import followers
from labeling import services as labeling
from labeling.models import Label
from labeling.services import LabelInput
from training import services
from training.models import BakeOff, Job, Round
from training.services import loop

pytestmark = pytest.mark.django_db


def test_a_job_nobody_waits_on_moves_nothing(base_run, base_policy):
    # Not a round's stage, no bake-off's, not an import: each follower looks and leaves it.
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, status=Job.Status.SUCCEEDED)
    services.announce_finished(job)
    loop.on_job_finished(job)
    assert list(Job.objects.all()) == [job] and not Round.objects.exists()


def test_announcing_a_round_job_reaches_the_loop(base_run, base_policy, people, make_comparison):
    # The round's next stage is queued through the loop, whichever way the job is announced.
    base_run.recipe = "direct"
    base_run.method, base_run.method_config = "dpo", {}
    base_run.save()
    labeling.submit_label(people.outsider, LabelInput(make_comparison().pk, "a"), require_lease=False)
    round_ = services.start_round(base_run, "direct")
    update = round_.jobs.get()
    update.mark_failed("out of memory")
    services.announce_finished(update)
    round_.refresh_from_db()
    assert (round_.status, round_.error) == (Round.Status.FAILED, "out of memory")


def test_labels_stand_on_their_own_without_a_follower(people, make_comparison, monkeypatch):
    # The labeling app works with nobody following (the training app builds on it, not
    # the other way round): labels are stored and undo is allowed.
    monkeypatch.setattr(followers, "_follower", followers.NO_FOLLOWER)
    comparison = make_comparison()
    labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    assert Label.objects.filter(annotator=people.annotator).count() == 1
    assert labeling.undo_last_label(people.annotator) == comparison
    assert not Label.objects.exists()


def test_the_follower_hears_of_each_label_and_may_refuse_its_undo(people, make_comparison, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    heard = []
    monkeypatch.setattr(followers, "_follower", followers.LabelFollower(
        on_submitted=heard.append, undo_refusal=lambda label: f"label {label.pk} is history"))
    comparison = make_comparison()
    with django_capture_on_commit_callbacks(execute=True):
        label, _ = labeling.submit_label(people.annotator, LabelInput(comparison.pk, "b"), require_lease=False)
    assert heard == [comparison.run_id]
    with pytest.raises(labeling.UndoRefused, match=f"label {label.pk} is history"):
        labeling.undo_last_label(people.annotator)
    assert Label.objects.filter(pk=label.pk).exists()


def test_a_round_advances_through_its_stages_then_succeeds(base_run, base_policy):
    round_ = Round.objects.create(number=1, run=base_run, recipe="rlhf", stages=["policy_update", "evaluation"],
                                  stage="policy_update", policy_before=base_policy)
    round_.advance()
    assert (round_.stage, round_.status, round_.finished_at) == ("evaluation", Round.Status.RUNNING, None)
    assert round_.waits_before_next_stage  # no job queued for its stage yet
    round_.advance()
    round_.refresh_from_db()
    assert round_.stage == "done" and round_.status == Round.Status.SUCCEEDED and round_.finished_at


def test_a_run_pauses_and_resumes(base_run, people):
    base_run.pause(people.researcher, "x" * 600)
    base_run.refresh_from_db()
    assert base_run.paused and base_run.paused_by == people.researcher and len(base_run.pause_reason) == 500
    base_run.resume()
    base_run.refresh_from_db()
    assert (base_run.paused, base_run.paused_by, base_run.paused_at, base_run.pause_reason) == (False, None, None, "")


def test_a_bakeoff_moves_from_training_to_judging_or_fails(base_run, base_policy):
    bakeoff = BakeOff.objects.create(run=base_run, start=base_policy, label_bound=0)
    job = Job.objects.create(kind=Job.Kind.EVALUATE, run=base_run)
    bakeoff.start_evaluating(job)
    bakeoff.refresh_from_db()
    assert (bakeoff.status, bakeoff.evaluation_job) == (BakeOff.Status.EVALUATING, job) and not bakeoff.is_settled
    bakeoff.start_judging()
    assert bakeoff.is_settled and bakeoff.finished_at
    other = BakeOff.objects.create(run=base_run, start=base_policy, label_bound=0)
    other.fail("every candidate failed")
    other.refresh_from_db()
    assert (other.status, other.error) == (BakeOff.Status.FAILED, "every candidate failed")
