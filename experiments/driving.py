"""How an experiment gets its jobs done, chosen explicitly by whoever starts it: inline
in this process (`run_job_now`, a round's stages one after another), or through the
real Celery workers (enqueued, then waited on). Never one as a fallback for the other:
the Celery driver refuses to start when the broker or the workers do not answer."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.utils import timezone

from training.models import Job, Round
from training.services import enqueue_on_commit, run_job_now
from training.services.jobs import jobs_kept_for_this_process


class DriverError(RuntimeError):
    """The driver cannot do its work (no broker, no workers, a job that never ends)."""


class InlineDriver:
    mode = "inline"

    def __init__(self, on_progress: Callable[[], None] = lambda: None):
        self.on_progress = on_progress

    def run_job(self, job: Job) -> Job:
        job = run_job_now(job)
        self.on_progress()
        return job

    def run_round(self, start: Callable[[], Round]) -> Round:
        """Start a round and run each stage's job here as the previous one finishes."""
        with jobs_kept_for_this_process() as queued:
            round_ = start()
            while queued:
                self.run_job(queued.pop(0))
        round_.refresh_from_db()
        return round_


class CeleryDriver:
    mode = "celery"

    def __init__(self, on_progress: Callable[[], None] = lambda: None, poll_seconds: float = 2.0,
                 job_timeout_seconds: float = 6 * 3600):
        self.on_progress = on_progress
        self.poll_seconds = poll_seconds
        self.job_timeout_seconds = job_timeout_seconds

    def check_ready(self) -> None:
        """DriverError unless the broker answers and at least one worker listens."""
        from training.services.workers import worker_status

        status = worker_status(timeout=2.0)
        if status["error"]:
            raise DriverError(f"--celery needs the broker: {status['error']} Start redis and the workers "
                              "(make demo), or choose --inline.")
        if not status["workers"]:
            raise DriverError("--celery needs a running Celery worker and none answered; start one (make worker), "
                              "or choose --inline.")

    def wait(self, finished: Callable[[], bool], what: str) -> None:
        deadline = timezone.now().timestamp() + self.job_timeout_seconds
        while not finished():
            if timezone.now().timestamp() > deadline:
                raise DriverError(f"{what} did not finish in {self.job_timeout_seconds:.0f} s")
            self.on_progress()
            time.sleep(self.poll_seconds)
        self.on_progress()

    def run_job(self, job: Job) -> Job:
        enqueue_on_commit(job)  # outside a transaction: sent now
        self.wait(lambda: Job.objects.get(pk=job.pk).is_finished, str(job))
        job.refresh_from_db()
        return job

    def run_round(self, start: Callable[[], Round]) -> Round:
        round_ = start()
        self.wait(lambda: Round.objects.get(pk=round_.pk).status != Round.Status.RUNNING, str(round_))
        round_.refresh_from_db()
        return round_


DRIVERS = {driver.mode: driver for driver in (InlineDriver, CeleryDriver)}
