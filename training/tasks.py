"""The one Celery entry point: run a job of any kind. The job's kind says which queue it
was sent to and what runs it (training/services/jobs.py); this task re-fetches the row,
claims it, delegates, and announces the result."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from training import services
from training.ml.loading import configure_torch_threads
from training.models import Job
from training.services.jobs import JOB_TYPES, RUN_JOB_TASK

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
    configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
    job_kind = JOB_TYPES[job.kind]
    if not job_kind.claim(job):
        job.refresh_from_db()
        if job.is_finished:
            return
        # Another job of its kind holds the run (one reward model trains at a time).
        raise self.retry(countdown=settings.PREFLOOP_RM_WAIT_SECONDS)
    job_kind.run(job)
    job.refresh_from_db()
    services.announce_finished(job)
