"""Cancelling a job: a pending one at once, a running one at its next step or before it
publishes, a dead worker's at the sweep; its round fails with the reason; researchers
only, on the pages and the API. The training-side stops (a real reward model, a
launched policy update) are tested with them: tests/test_reward_model_training.py and
tests/test_policy_methods.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from tests.test_queue_concurrency import wait_until_a_request_waits_for_a_lock
from training import services
from training.models import Job, JobCancelled, Round
from training.services.job_recovery import SweepReport, restart_silent_job, sweep_jobs
from training.tasks import run_job

pytestmark = pytest.mark.django_db


def a_job(run, status=Job.Status.PENDING, **fields) -> Job:
    return Job.objects.create(kind=Job.Kind.GENERATE, run=run, status=status, **fields)


def test_a_pending_job_is_cancelled_at_once_and_its_message_runs_nothing(base_run, people):
    job = a_job(base_run)
    assert job.can_be_cancelled
    assert services.cancel_job(job, people.researcher) == f"Job {job.pk} is cancelled."
    job.refresh_from_db()
    assert (job.status, job.error, job.cancelled_by) == ("cancelled", "cancelled by rita before it started", "rita")
    assert job.finished_at is not None and not job.can_be_cancelled
    run_job.apply(args=[job.pk])  # the worker takes the message later
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.attempts == 0 and job.started_at is None
    with pytest.raises(services.JobNotCancellable, match=r"has already finished \(cancelled\)"):
        services.cancel_job(job, people.researcher)


def test_a_running_job_stops_at_its_next_step_and_is_recorded_cancelled(base_run, people):
    job = a_job(base_run, Job.Status.RUNNING, attempts=1, started_at=timezone.now())
    job.report_progress(1, 5, {"loss": 0.5})
    assert services.cancel_job(Job.objects.get(pk=job.pk), people.researcher).endswith(
        "stops at its next step; a training publishes nothing.")
    assert Job.objects.get(pk=job.pk).status_text == "stopping: cancelled by rita"
    assert not Job.objects.get(pk=job.pk).can_be_cancelled  # asked once; the button goes
    with pytest.raises(JobCancelled, match="cancelled by rita"):
        job.report_progress(2, 5, {"loss": 0.4})
    assert Job.objects.get(pk=job.pk).step == 1  # the step after the cancel is not recorded
    job.mark_failed(f"JobCancelled: job {job.pk} was cancelled by rita")  # what a runner's except does
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.error == "cancelled by rita; stopped at step 1 of 5"
    assert len(job.metrics) == 1


def test_a_failure_after_the_cancel_is_kept_in_the_note(base_run, people):
    job = a_job(base_run, Job.Status.RUNNING, attempts=1)
    services.cancel_job(job, people.researcher)
    job.mark_failed("RuntimeError: out of memory")
    assert job.status == Job.Status.CANCELLED and job.error.endswith("(it had failed: RuntimeError: out of memory)")


def test_a_cancel_that_comes_after_the_job_published_says_it_was_too_late(base_run, people):
    job = a_job(base_run, Job.Status.RUNNING, attempts=1, error="v2 could not answer")  # an evaluation's note
    services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)
    job.mark_succeeded({"policy_version": 3})
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.error == "v2 could not answer; cancelled by rita too late: it had finished"
    with pytest.raises(services.JobNotCancellable, match=r"has already finished \(succeeded\)"):
        services.cancel_job(job, people.researcher)


def test_a_round_whose_job_is_cancelled_fails_with_the_reason(base_run, people, make_comparison):
    from labeling import services as labeling
    from labeling.services import LabelInput

    labeling.submit_label(people.outsider, LabelInput(make_comparison().pk, "a"), require_lease=False)
    round_ = services.start_round(base_run, "rlhf", requested_by=people.researcher)
    services.cancel_job(round_.jobs.get(), people.researcher)
    round_.refresh_from_db()
    assert round_.status == Round.Status.FAILED and round_.error == "cancelled by rita before it started"


@pytest.mark.django_db(transaction=True)
def test_a_cancel_while_a_job_publishes_waits_for_it_and_then_finds_it_too_late(base_run, people):
    """The publishing transaction holds the job's row (Job.raise_if_cancelled), so a
    version is never published under a cancel that was accepted. Meaningful on
    PostgreSQL (scripts/test_postgresql.sh): a SELECT FOR UPDATE filtered on the cancel
    locked no row there, and the cancel went through at once."""
    job = a_job(base_run, Job.Status.RUNNING, attempts=1)
    holding, release = threading.Event(), threading.Event()

    def publish() -> str:
        try:
            with transaction.atomic():
                Job.objects.get(pk=job.pk).raise_if_cancelled()
                holding.set()
                release.wait(10)
            return "published"
        finally:
            connection.close()

    def cancel() -> str:
        try:
            holding.wait(10)
            return services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        published, cancelled = pool.submit(publish), pool.submit(cancel)
        assert holding.wait(10)
        wait_until_a_request_waits_for_a_lock()
        assert not cancelled.done()
        release.set()
        assert published.result() == "published" and "stops at its next step" in cancelled.result()
    job.refresh_from_db()
    job.mark_succeeded({"policy_version": 1})  # what the publishing job does next
    assert job.error == "cancelled by rita too late: it had finished"
    with pytest.raises(JobCancelled):  # a cancel that came first is seen
        with transaction.atomic():
            Job.objects.get(pk=job.pk).raise_if_cancelled()


def test_the_sweep_cancels_a_cancelled_job_whose_worker_died_instead_of_starting_it_again(base_run, people,
                                                                                          settings):
    long_ago = timezone.now() - timedelta(seconds=settings.PREFLOOP_WORKER_LOST_SECONDS + 60)
    job = a_job(base_run, Job.Status.RUNNING, attempts=1, started_at=long_ago, heartbeat_at=long_ago,
                worker="elsewhere:1")
    silent = a_job(base_run, Job.Status.RUNNING, attempts=1, started_at=long_ago, heartbeat_at=long_ago,
                   worker="elsewhere:2")
    services.cancel_job(job, people.researcher)
    report = sweep_jobs()
    job.refresh_from_db()
    assert report.cancelled == [job.pk] and silent.pk in report.restarted  # the other one is sent again
    assert job.status == Job.Status.CANCELLED and job.attempts == 1
    assert job.error == "cancelled by rita; its worker stopped before it did"

    # A cancel that lands after the sweep read the job: it is not sent again either.
    late = a_job(base_run, Job.Status.RUNNING, attempts=1, started_at=long_ago, heartbeat_at=long_ago,
                 worker="elsewhere:3")
    read_by_the_sweep = Job.objects.get(pk=late.pk)
    services.cancel_job(late, people.researcher)
    report = SweepReport()
    restart_silent_job(read_by_the_sweep, report)
    late.refresh_from_db()
    assert report.cancelled == [late.pk] and not report.restarted and late.status == Job.Status.CANCELLED
    assert late.error == "cancelled by rita; its worker stopped before it did"  # who, though the copy was older


def test_a_broker_failure_does_not_overwrite_a_cancel_made_while_it_was_tried(base_run, people, monkeypatch,
                                                                              django_capture_on_commit_callbacks):
    import training.services.jobs as jobs

    def cancelled_while_kombu_tried(job):
        services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(jobs, "send_job", cancelled_while_kombu_tried)
    job = a_job(base_run)
    with django_capture_on_commit_callbacks(execute=True):
        jobs.enqueue_on_commit(job)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and "never_sent" not in job.result  # the sweep asks nothing again
    assert job.error == "cancelled by rita before it started"


def test_the_cancel_button_is_for_researchers_and_goes_back_where_it_was(client, people, base_run):
    job = a_job(base_run)
    client.force_login(people.researcher)
    page = client.get(reverse("run_detail", args=[base_run.pk])).content.decode()
    assert f'action="{reverse("cancel_job", args=[job.pk])}"' in page
    back = reverse("run_detail", args=[base_run.pk])
    response = client.post(reverse("cancel_job", args=[job.pk]), {"next": back}, follow=True)
    assert response.redirect_chain[-1][0] == back and f"Job {job.pk} is cancelled." in response.content.decode()
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
    assert f'action="{reverse("cancel_job", args=[job.pk])}"' not in response.content.decode()

    again = client.post(reverse("cancel_job", args=[job.pk]), {"next": "https://evil.example/"}, follow=True)
    assert again.redirect_chain[-1][0] == reverse("researcher")  # not to another site
    assert "Not cancelled: job" in again.content.decode()

    client.force_login(people.annotator)
    other = a_job(base_run)
    assert client.post(reverse("cancel_job", args=[other.pk])).status_code == 403
    assert Job.objects.get(pk=other.pk).status == Job.Status.PENDING
    assert client.get(reverse("job_status", args=[other.pk])).status_code == 403
