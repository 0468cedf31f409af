"""The Celery entry points. `run_job` runs a job of any kind: the job's kind says which
queue it was sent to and what runs it (training/services/jobs.py); the task re-fetches
the row, claims it, delegates under a heartbeat, and announces the result. `sweep_jobs`
(on Celery beat) makes lost jobs converge (training/services/job_recovery.py)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from training import services
from training.ml.loading import configure_torch_threads
from training.models import Job
from training.services import job_recovery
from training.services.jobs import JOB_TYPES, RUN_JOB_TASK, heartbeat, job_memory_freed, worker_is_alive

log = logging.getLogger(__name__)


@shared_task(bind=True, name=RUN_JOB_TASK, max_retries=None)
def run_job(self, job_id: int) -> None:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        log.info("job %s is gone; nothing to do", job_id)
        return
    if job.is_finished:
        # A redelivery after a crash between the job and its announcement: announce
        # again (receivers are idempotent).
        services.announce_finished(job)
        return
    if job.status == Job.Status.RUNNING and job.cancel_requested_at and not worker_is_alive(job):
        job_recovery.cancel_abandoned(job)  # cancelled while its worker died: not started again
        return
    if job.status == Job.Status.RUNNING and worker_is_alive(job):
        # A second message for a job that a live worker runs (the sweep re-sent it in
        # the moment a worker took it, or redis re-delivered a long job): drop it. If
        # that worker dies after all, the sweep notices its silence.
        log.info("job %s is running on %s; dropping this duplicate message", job_id, job.worker)
        return
    if job.status == Job.Status.RUNNING and job.attempts >= settings.PREFLOOP_JOB_MAX_ATTEMPTS:
        job_recovery.give_up(job, f"its worker died while running it, {job.attempts} times, the most allowed "
                                  "(PREFLOOP_JOB_MAX_ATTEMPTS); out of memory?")
        return
    configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
    job_kind = JOB_TYPES[job.kind]
    if not job_kind.claim(job):
        job.refresh_from_db()
        if job.is_finished or job.status == Job.Status.RUNNING:
            return  # done, or another delivery won the claim
        # Another job of its kind holds the run (one reward model trains at a time).
        raise self.retry(countdown=settings.PREFLOOP_RM_WAIT_SECONDS)
    with heartbeat(job), job_memory_freed():
        job_kind.run(job)
    job.refresh_from_db()
    services.announce_finished(job)


@shared_task(name="training.tasks.sweep_jobs", ignore_result=True)
def sweep_jobs() -> dict:
    """Run by Celery beat every PREFLOOP_SWEEP_SECONDS."""
    return job_recovery.sweep_jobs().as_dict()
