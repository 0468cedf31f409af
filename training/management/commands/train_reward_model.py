from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from training import services
from training.models import Job


class Command(BaseCommand):
    help = "Train the next reward-model version on every label so far."

    def add_arguments(self, parser):
        parser.add_argument(
            "--enqueue", action="store_true", help="Send to the Celery train queue instead of running here."
        )

    def handle(self, *args, enqueue: bool, **options):
        if enqueue:
            job = services.request_reward_training(reason="command line")
            self.stdout.write(f"Reward-model job #{job.pk} is queued on the train queue.")
            return
        try:
            job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, params={"reason": "command line, in process"})
        except IntegrityError:
            raise CommandError("a reward-model training is already waiting in the queue") from None
        if not services.claim_reward_training(job):
            job.mark_failed("another reward model is training; try again when it is done")
            raise CommandError(job.error)
        version = services.run_reward_training_job(job)
        if version is None:
            job.refresh_from_db()
            raise CommandError(f"training failed: {job.error}")
        accuracy = "n/a" if version.heldout_accuracy is None else f"{version.heldout_accuracy:.3f}"
        self.stdout.write(self.style.SUCCESS(
            f"Published {version}: {version.train_pairs} training pairs, held-out accuracy {accuracy}."
        ))
