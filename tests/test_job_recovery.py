"""Jobs converge by themselves after the broker or a worker failed (issue 12, item 9):
a pending job whose message redis lost is sent again, a running job whose whole worker
died goes back to the queue (or fails with the reason after its last attempt), a
duplicate message never runs a job twice, and an automatic trigger lost to an outage
fires once the broker is back. The worker tests kill a real redis-server and a real
Celery worker; the rest check the rules on the database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.processes import PROJECT_DIR, running_celery_worker, running_redis, wait_for
from tests.test_worker_integration import label_marker_preferences, wait_until_finished, worker_env
from training import services
from training.models import Job, RewardModelVersion, Round
from training.services.job_recovery import queued_task_ids, sweep_jobs
from training.services.jobs import heartbeat
from training.tasks import run_job


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def running_job(run, attempts: int, silent_for: float, worker: str = "elsewhere:1", round_=None) -> Job:
    beat = timezone.now() - timedelta(seconds=silent_for)
    return Job.objects.create(kind=Job.Kind.GENERATE, run=run, status=Job.Status.RUNNING, attempts=attempts,
                              worker=worker, started_at=beat, heartbeat_at=beat, round=round_,
                              params={"policy_version": 0, "prompt_ids": []})


@pytest.mark.django_db
def test_a_silent_job_on_its_last_attempt_fails_with_the_reason_and_fails_its_round(base_run, settings):
    settings.PREFLOOP_WORKER_LOST_SECONDS, settings.PREFLOOP_JOB_MAX_ATTEMPTS = 60, 3
    round_ = Round.objects.create(run=base_run, number=1, recipe="rlhf", stage="comparisons",
                                  policy_before=base_run.base_version)
    lost = running_job(base_run, attempts=3, silent_for=61, worker="gpu-box:4242", round_=round_)
    alive = running_job(base_run, attempts=3, silent_for=30)

    report = sweep_jobs()

    lost.refresh_from_db()
    alive.refresh_from_db()
    round_.refresh_from_db()
    assert report.failed == [lost.pk] and lost.status == Job.Status.FAILED
    assert "gpu-box:4242 went silent" in lost.error and "started 3 times" in lost.error
    assert alive.status == Job.Status.RUNNING
    assert round_.status == Round.Status.FAILED and "went silent" in round_.error


@pytest.mark.django_db(transaction=True)
def test_a_silent_job_with_attempts_left_waits_as_pending_while_the_broker_is_down(base_run, settings):
    """Nothing listens on the test broker's port outside the worker tests."""
    settings.PREFLOOP_WORKER_LOST_SECONDS, settings.PREFLOOP_JOB_MAX_ATTEMPTS = 60, 3
    lost = running_job(base_run, attempts=1, silent_for=120)

    report = sweep_jobs()

    lost.refresh_from_db()
    assert report.restarted == [lost.pk] and report.broker_error
    assert lost.status == Job.Status.PENDING and "sent again (attempt 2)" in lost.error


@pytest.mark.django_db
def test_the_jobs_table_says_when_a_running_jobs_worker_has_gone_quiet(base_run, people, client, settings):
    settings.PREFLOOP_HEARTBEAT_SECONDS = 10
    quiet = running_job(base_run, attempts=1, silent_for=45)
    fine = running_job(base_run, attempts=1, silent_for=5)
    client.force_login(people.researcher)

    page = client.get(reverse("researcher")).content.decode()
    status = client.get(reverse("job_status", args=[quiet.pk])).json()

    assert "no word from its worker for 45 s" in page
    assert "{#" not in page and "#}" not in page  # no template comment leaks into the page
    assert status["status"] == "running" and status["status_text"].startswith("running? no word")
    assert client.get(reverse("job_status", args=[fine.pk])).json()["status_text"] == "running"


@pytest.mark.django_db(transaction=True)
def test_a_running_job_beats_while_it_works_and_stops_when_done(base_run):
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, params={})
    assert job.mark_running("here:1")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))

    with heartbeat(job, interval=0.1):
        wait_for(lambda: Job.objects.get(pk=job.pk).silent_seconds() < 1, 5, "a heartbeat")
    last = Job.objects.get(pk=job.pk).heartbeat_at
    time.sleep(0.3)
    assert Job.objects.get(pk=job.pk).heartbeat_at == last  # the thread is gone with the job


@pytest.mark.django_db
def test_of_two_deliveries_that_race_for_a_job_exactly_one_starts_it(base_run):
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, params={})
    first, second = Job.objects.get(pk=job.pk), Job.objects.get(pk=job.pk)
    assert first.mark_running("a:1") is True
    assert second.mark_running("b:2") is False
    job.refresh_from_db()
    assert (job.attempts, job.worker) == (1, "a:1")


@pytest.mark.django_db
def test_a_message_for_a_job_a_live_worker_runs_is_dropped_and_one_whose_worker_died_too_often_fails(
        base_run, settings):
    settings.PREFLOOP_WORKER_LOST_SECONDS, settings.PREFLOOP_JOB_MAX_ATTEMPTS = 60, 3
    here = socket.gethostname()
    live = running_job(base_run, attempts=1, silent_for=2, worker=f"{here}:{os.getpid()}")
    crashing = running_job(base_run, attempts=3, silent_for=2, worker=f"{here}:{dead_pid()}")

    run_job(live.pk)  # a duplicate: must not start it a second time
    run_job(crashing.pk)  # its worker died mid-job for the third time

    live.refresh_from_db()
    crashing.refresh_from_db()
    assert (live.status, live.attempts) == (Job.Status.RUNNING, 1)
    assert crashing.status == Job.Status.FAILED and "died while running it, 3 times" in crashing.error


# --- A real redis-server and real Celery processes, killed.


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_queued_job_that_redis_lost_is_sent_again_and_trains(tmp_path, tiny_model_dir, people, tiny_base,
                                                               settings):
    settings.PREFLOOP_JOB_RESEND_SECONDS = 0
    run = tiny_base.run
    run.reward_auto_train_labels = 0
    run.save()
    label_marker_preferences(people.annotator, tiny_base, 24)
    log_path = tmp_path / "worker.log"

    with running_redis(os.environ["REDIS_URL"], tmp_path) as redis:
        job = services.request_reward_training(run)  # no train worker yet: it waits in the queue
        job.refresh_from_db()
        assert job.celery_task_id in queued_task_ids({"train"})
        assert sweep_jobs().resent == []  # waiting its turn is not lost
        redis.send_signal(signal.SIGKILL)  # no persistence: the queue is gone
        redis.wait(10)
    with running_redis(os.environ["REDIS_URL"], tmp_path):
        assert queued_task_ids({"train"}) == set()
        assert services.request_reward_training(run).pk == job.pk  # still "waiting", so every request is this one
        lost_task = job.celery_task_id

        report = sweep_jobs()

        job.refresh_from_db()
        assert report.resent == [job.pk] and job.celery_task_id != lost_task
        assert queued_task_ids({"train"}) == {job.celery_task_id}
        with running_celery_worker("train", worker_env(tiny_model_dir, tmp_path / "var"), log_path):
            wait_until_finished(job, 180, log_path)
    assert RewardModelVersion.objects.get().label_count == 24


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_job_whose_whole_worker_was_killed_is_sent_again_by_the_beat_sweep(tmp_path, tiny_model_dir, people,
                                                                             tiny_base):
    """SIGKILL on the whole worker: no process is left to hand the message back, and
    redis would re-deliver it only after its visibility timeout (hours). The worker's
    heartbeat stops; the sweep that a real `celery beat` sends every second to a real
    default-queue worker puts the job back, and a new train worker finishes it."""
    run = tiny_base.run
    run.reward_auto_train_labels = 0
    run.reward_config["epochs"] = 12
    run.save()
    label_marker_preferences(people.annotator, tiny_base, 24)
    env = worker_env(tiny_model_dir, tmp_path / "var", PREFLOOP_HEARTBEAT_SECONDS="1",
                     PREFLOOP_WORKER_LOST_SECONDS="6", PREFLOOP_SWEEP_SECONDS="1")

    with running_redis(os.environ["REDIS_URL"], tmp_path), \
            running_celery_worker("default", env, tmp_path / "default.log"):
        beat_log = (tmp_path / "beat.log").open("w")
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "prefloop", "beat", "-s",
                                 str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
                                cwd=PROJECT_DIR, env={**os.environ, **env}, stdout=beat_log, stderr=subprocess.STDOUT)
        try:
            with running_celery_worker("train", env, tmp_path / "train1.log") as doomed:
                job = services.request_reward_training(run)

                def training_underway():
                    job.refresh_from_db()
                    return job.status == Job.Status.RUNNING and job.step >= 3

                wait_for(training_underway, 120, "training to get going", interval=0.2)
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(10)

            def sent_again():
                job.refresh_from_db()
                return job.status == Job.Status.PENDING

            wait_for(sent_again, 60, "the sweep to send the job again", interval=0.5)
            assert "went silent" in job.error and "sent again (attempt 2)" in job.error
            assert not RewardModelVersion.objects.exists()
            with running_celery_worker("train", env, tmp_path / "train2.log"):
                wait_until_finished(job, 240, tmp_path / "train2.log")
        finally:
            beat.terminate()
            beat.wait(20)
            beat_log.close()
    assert job.attempts == 2 and RewardModelVersion.objects.count() == 1
    assert "training.tasks.sweep_jobs" in (tmp_path / "default.log").read_text()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_automatic_trigger_lost_to_an_outage_fires_when_the_broker_returns(tmp_path, tiny_base, people):
    run = tiny_base.run
    run.reward_auto_train_labels = 20
    run.save()
    label_marker_preferences(people.annotator, tiny_base, 20)  # the broker is down: nothing listens
    lost = Job.objects.get(kind=Job.Kind.TRAIN_REWARD)
    assert lost.status == Job.Status.FAILED and "could not reach the task queue" in lost.error
    assert sweep_jobs().triggered == []  # still down, and the last try was just now
    Job.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=2))

    with running_redis(os.environ["REDIS_URL"], tmp_path):
        report = sweep_jobs()
        again = Job.objects.get(kind=Job.Kind.TRAIN_REWARD, status=Job.Status.PENDING)
        assert report.triggered == [again.pk] and again.params["reason"] == "20 new labels"
        assert queued_task_ids({"train"}) == {again.celery_task_id}
        assert sweep_jobs().triggered == []  # one is waiting now


@pytest.mark.django_db(transaction=True)
def test_the_sweep_requests_again_only_a_trigger_that_never_reached_the_broker(base_run, people, make_comparison):
    """A reward-model job that ran and failed (say, out of disk) is not retried every
    minute by the sweep; one that never reached the broker is."""
    from labeling import services as labeling
    from labeling.services import LabelInput

    base_run.reward_auto_train_labels = 2
    base_run.save()
    for _ in range(2):  # the broker is down here: the automatic trigger fails to send
        labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    never_sent = Job.objects.get(kind=Job.Kind.TRAIN_REWARD)
    assert never_sent.status == Job.Status.FAILED and never_sent.result == {"never_sent": True}
    Job.objects.filter(pk=never_sent.pk).update(created_at=timezone.now() - timedelta(minutes=2))

    again = sweep_jobs().triggered
    assert len(again) == 1 and again[0] != never_sent.pk

    Job.objects.filter(pk=again[0]).update(result={}, error="RuntimeError: no space left on device",
                                           created_at=timezone.now() - timedelta(minutes=2))  # it ran and failed
    assert sweep_jobs().triggered == []


@pytest.mark.parametrize("auto_loop", [False, True])
@pytest.mark.django_db(transaction=True)
def test_the_sweep_requests_again_a_head_refit_that_never_reached_the_broker(base_run, people, make_comparison,
                                                                            auto_loop):
    """Between full retrains a label asks for a head refit; lost to an outage with no
    label after it, the labels so far would reach no version. Also for an automatic
    loop, whose rounds make its full retrains and whose labels ask for refits."""
    from labeling import services as labeling
    from labeling.services import LabelInput
    from training.models import RewardModelVersion

    base_run.reward_auto_train_labels, base_run.auto_loop, base_run.loop_min_labels = 100, auto_loop, 100
    base_run.reward_config.update(refit_every_labels=1)
    base_run.save()
    RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir=base_run.base_model_dir,
                                      weights_dir="x", label_count=0, last_label_id=0, reward_mean=0.0,
                                      reward_std=1.0, has_features=True)
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    lost = Job.objects.get()  # the broker is down here: the refit's request failed
    assert lost.kind == Job.Kind.REFIT_REWARD and lost.status == Job.Status.FAILED
    assert lost.result == {"never_sent": True}
    assert sweep_jobs().triggered == []  # a refit failed a moment ago: one try a minute
    Job.objects.filter(pk=lost.pk).update(finished_at=timezone.now() - timedelta(minutes=2))

    again = sweep_jobs().triggered
    assert len(again) == 1 and again[0] != lost.pk
    assert Job.objects.get(pk=again[0]).kind == Job.Kind.REFIT_REWARD  # no full retrain: 1 label of 100
    assert not Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).exists()


@pytest.mark.django_db(transaction=True)
def test_a_lost_full_retrain_is_requested_again_though_a_refit_was_sent_after_it(base_run, people,
                                                                                 make_comparison):
    from labeling import services as labeling
    from labeling.services import LabelInput

    base_run.reward_auto_train_labels = 1
    base_run.save()
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    lost = Job.objects.get(kind=Job.Kind.TRAIN_REWARD)
    assert lost.result == {"never_sent": True}
    Job.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    # The broker came back for the refit requested after it, which ran.
    Job.objects.create(kind=Job.Kind.REFIT_REWARD, run=base_run, status=Job.Status.SUCCEEDED)

    again = sweep_jobs().triggered
    assert len(again) == 1 and Job.objects.get(pk=again[0]).kind == Job.Kind.TRAIN_REWARD


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_pending_jobs_message_held_by_a_dead_worker_is_sent_again(tmp_path, base_run, settings):
    """A countdown retry held unacknowledged by a worker that then died stays in redis's
    unacked hash until the visibility timeout (hours): past the retry interval it no
    longer counts as held."""
    settings.PREFLOOP_JOB_RESEND_SECONDS, settings.PREFLOOP_RM_WAIT_SECONDS = 0, 15
    with running_redis(os.environ["REDIS_URL"], tmp_path):
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, run=base_run, celery_task_id="held-by-someone",
                                 queued_at=timezone.now() - timedelta(minutes=5), params={"last_label_id": 0})
        message = json.dumps([{"headers": {"id": "held-by-someone"}, "properties": {}}, "", "train"])
        client.hset("unacked", "tag-1", message)
        client.zadd("unacked_index", {"tag-1": time.time() - 5})  # a live worker's retry, 5 s ago
        assert sweep_jobs().resent == []

        client.zadd("unacked_index", {"tag-1": time.time() - 600})  # its worker died 10 minutes ago
        client.hset("unacked", "junk", "not json")  # another app's data must not stop the sweep
        client.zadd("unacked_index", {"junk": time.time()})
        assert sweep_jobs().resent == [job.pk]
        job.refresh_from_db()
        assert job.celery_task_id != "held-by-someone" and job.celery_task_id in queued_task_ids({"train"})


def test_a_step_that_logs_nan_is_stored_as_null_not_a_failed_job(base_run):
    """Trainers log NaN now and then; SQLite's JSON and PostgreSQL's jsonb refuse it."""
    job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, run=base_run)
    job.report_progress(1, 2, {"loss": float("nan"), "nested": {"kl": float("inf")}, "ok": 0.5})
    job.mark_succeeded({"accuracy": float("-inf"), "pairs": [1.0, float("nan")]})
    job.refresh_from_db()
    assert job.metrics == [{"loss": None, "nested": {"kl": None}, "ok": 0.5}]
    assert job.result == {"accuracy": None, "pairs": [1.0, None]}
