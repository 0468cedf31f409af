from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from training import services
from training.models import Job, RewardModelVersion


class Command(BaseCommand):
    help = "Train the next reward-model version of a run on every label so far."

    def add_arguments(self, parser):
        parser.add_argument("--run", help="run name (default: the first run)")
        parser.add_argument(
            "--enqueue", action="store_true", help="Send to the Celery train queue instead of running here."
        )

    def handle(self, *args, run: str | None, enqueue: bool, **options):
        try:
            chosen = services.run_named(run)
        except services.RunError as error:
            raise CommandError(str(error)) from None
        if enqueue:
            job = services.request_reward_training(chosen, reason="command line")
            self.stdout.write(f"Reward-model job #{job.pk} is queued on the train queue.")
            return
        try:
            job = services.create_reward_training_job(chosen, reason="command line, in process")
        except IntegrityError:
            raise CommandError("a reward-model training of this run is already waiting in the queue") from None
        job = services.run_job_now(job)
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"training failed: {job.error}")
        version = RewardModelVersion.objects.get(number=job.result["version"])
        accuracy = "n/a" if version.heldout_accuracy is None else f"{version.heldout_accuracy:.3f}"
        self.stdout.write(self.style.SUCCESS(
            f"Published {version}: {version.train_pairs} training pairs, held-out accuracy {accuracy}."
        ))
