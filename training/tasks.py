"""Celery entry points: thin wrappers that re-fetch their rows, delegate, and tell the
job's round (if any) that the job is done."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from training import services
from training.models import Job

log = logging.getLogger(__name__)


def pending_job(job_id: int) -> Job | None:
    """The job to run, or None when it is gone or already finished. A finished job may
    be a redelivery after a crash between the job and its round's next step, so the
    round is told again (that is idempotent)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        log.info("job %s is gone; nothing to do", job_id)
        return None
    if job.is_finished:
        services.job_finished(job)
        return None
    from training.ml.generation import configure_torch_threads

    configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
    return job


@shared_task(name="training.tasks.generate_comparisons")
def generate_comparisons(job_id: int) -> None:
    """Runs on the `gpu` queue (see CELERY_TASK_ROUTES)."""
    if (job := pending_job(job_id)) is not None:
        services.run_generation_job(job)
        services.job_finished(job)


@shared_task(bind=True, name="training.tasks.train_reward_model", max_retries=None)
def train_reward_model(self, job_id: int) -> None:
    """Runs on the `train` queue. Only one reward model trains at a time: if another is
    running, this one is retried shortly and waits its turn."""
    if (job := pending_job(job_id)) is None:
        return
    if not services.claim_reward_training(job):
        raise self.retry(countdown=settings.PREFLOOP_RM_WAIT_SECONDS)
    services.run_reward_training_job(job)
    services.job_finished(job)


@shared_task(name="training.tasks.run_ppo")
def run_ppo(job_id: int) -> None:
    """Runs on the `gpu` queue."""
    if (job := pending_job(job_id)) is not None:
        services.run_ppo_job(job)
        services.job_finished(job)


@shared_task(name="training.tasks.evaluate_policies")
def evaluate_policies(job_id: int) -> None:
    """Runs on the `gpu` queue."""
    if (job := pending_job(job_id)) is not None:
        services.run_evaluation_job(job)
        services.job_finished(job)
