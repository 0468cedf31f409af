"""Getting jobs to the workers, and telling the rest of the app when one is done.

Every kind of job is a peer in `JOB_TYPES`: the queue it runs on, the function that does
the work, and the claim that decides whether it may start now (by default: yes). The
modules that own a kind register it with `@job_type(...)`; one Celery task
(`training.tasks.run_job`) runs any of them. When a job finishes, `job_finished` is sent;
the round state machine listens (connected in `TrainingConfig.ready`), and so can
anything else that waits on jobs, without this module importing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.dispatch import Signal

from training.models import Job

log = logging.getLogger(__name__)

RUN_JOB_TASK = "training.tasks.run_job"

job_finished = Signal()
"""Sent with `job=` once a job succeeded, failed or was cancelled (maybe more than once
for the same job: a redelivered task announces it again; receivers are idempotent)."""


def claim_job(job: Job) -> bool:
    """The default claim: a pending job starts; a running one starts again (its worker
    died and the broker handed the message out again)."""
    job.refresh_from_db()
    if job.is_finished:
        return False
    if job.status == Job.Status.RUNNING:
        log.warning("job %s was running when its worker died; starting it again", job.pk)
    job.mark_running()
    return True


@dataclass(frozen=True)
class JobType:
    queue: str
    """Celery queue: `gpu` for work that holds a policy, `train` for reward models."""
    run: Callable[[Job], object]
    """Does the work of a claimed job and marks it succeeded or failed."""
    claim: Callable[[Job], bool] = claim_job
    """Marks the job running and returns True, or False when it must wait its turn."""


JOB_TYPES: dict[str, JobType] = {}


def job_type(kind: str, queue: str, claim: Callable[[Job], bool] = claim_job):
    """Register the decorated function as the runner of jobs of this kind."""

    def register(run: Callable[[Job], object]):
        JOB_TYPES[kind] = JobType(queue, run, claim)
        return run

    return register


def announce_finished(job: Job) -> None:
    if job.is_finished:
        job_finished.send(sender=Job, job=job)


def enqueue_on_commit(job: Job) -> None:
    """Send the job to its queue once its row is committed. If the broker is unreachable
    the job is marked failed with that reason instead of waiting forever as pending."""
    from prefloop.celery import app

    queue = JOB_TYPES[job.kind].queue

    def send() -> None:
        try:
            result = app.send_task(RUN_JOB_TASK, args=[job.pk], queue=queue)
        except Exception as error:  # kombu raises several types for an unreachable broker
            log.exception("could not enqueue job %s", job.pk)
            job.mark_failed(f"could not reach the task queue: {error}")
            announce_finished(job)  # a round waiting on it fails too
            return
        Job.objects.filter(pk=job.pk).update(celery_task_id=result.id or "")

    transaction.on_commit(send)


def run_job_now(job: Job) -> Job:
    """Run a job in this process (a command's or an experiment's inline mode, chosen
    explicitly; never a fallback for a broker that is down) and announce it."""
    job_kind = JOB_TYPES[job.kind]
    if not job_kind.claim(job):
        job.refresh_from_db()
        if not job.is_finished:
            job.mark_failed("another job of this kind is running for this run; try again when it is done")
    else:
        job_kind.run(job)
    job.refresh_from_db()
    announce_finished(job)
    return job
