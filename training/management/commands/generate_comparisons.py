from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from training import services
from training.models import Job, PolicyVersion


class Command(BaseCommand):
    help = "Sample completions from a policy version and queue them as comparisons of a run."

    def add_arguments(self, parser):
        parser.add_argument("--run", help="run name (default: the first run)")
        parser.add_argument("--policy", type=int, help="policy version number (default: the run's head)")
        parser.add_argument("--prompts", type=int, default=16, help="How many prompts to sample.")
        parser.add_argument("--samples", type=int, default=2, help="Completions per comparison (2..8).")
        parser.add_argument(
            "--enqueue", action="store_true", help="Send to the Celery gpu queue instead of running here."
        )

    def handle(self, *args, run: str | None, policy: int | None, prompts: int, samples: int, enqueue: bool,
               **options):
        if not 2 <= samples <= 8:
            raise CommandError("--samples must be between 2 and 8")
        try:
            chosen = services.run_named(run)
        except services.RunError as error:
            raise CommandError(str(error)) from None
        version = chosen.head if policy is None else PolicyVersion.objects.filter(number=policy).first()
        if version is None:
            raise CommandError(f"no policy version {policy}")
        if enqueue:
            job = services.request_generation(chosen, version, prompts, samples=samples)
            self.stdout.write(f"Queued generation job #{job.pk} on the gpu queue.")
            return
        job = services.run_job_now(services.create_generation_job(chosen, version, prompts, samples=samples))
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"generation failed: {job.error}")
        self.stdout.write(self.style.SUCCESS(f"Created {job.result['comparisons']} comparisons from {version}."))
