"""Getting jobs to the workers."""

from __future__ import annotations

import logging

from django.db import transaction

from training.models import Job

log = logging.getLogger(__name__)


def enqueue_on_commit(job: Job, task) -> None:
    """Send the task once the job row is committed. If the broker is unreachable the job
    is marked failed with that reason instead of waiting forever as pending."""

    def send() -> None:
        try:
            result = task.apply_async(args=[job.pk])
        except Exception as error:  # kombu raises several types for an unreachable broker
            log.exception("could not enqueue job %s", job.pk)
            job.mark_failed(f"could not reach the task queue: {error}")
            from training.services.rounds import job_finished  # a round waiting on it fails too

            job_finished(job)
            return
        Job.objects.filter(pk=job.pk).update(celery_task_id=result.id or "")

    transaction.on_commit(send)
