"""Celery entry points: thin wrappers that re-fetch their rows and delegate."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from training import services
from training.models import Job

log = logging.getLogger(__name__)


@shared_task(name="training.tasks.generate_comparisons")
def generate_comparisons(job_id: int) -> None:
    """Runs on the `gpu` queue (see CELERY_TASK_ROUTES)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        log.info("generation job %s is gone or finished; nothing to do", job_id)
        return
    from training.ml.generation import configure_torch_threads

    configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
    services.run_generation_job(job)


@shared_task(bind=True, name="training.tasks.train_reward_model", max_retries=None)
def train_reward_model(self, job_id: int) -> None:
    """Runs on the `train` queue. Only one reward model trains at a time: if another is
    running, this one is retried shortly and waits its turn."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        log.info("reward-model job %s is gone or finished; nothing to do", job_id)
        return
    if not services.claim_reward_training(job):
        raise self.retry(countdown=settings.PREFLOOP_RM_WAIT_SECONDS)
    from training.ml.generation import configure_torch_threads

    configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
    services.run_reward_training_job(job)
