from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from training import services
from training.models import Job, PolicyVersion


class Command(BaseCommand):
    help = "Sample completions from a policy version and queue them as comparisons."

    def add_arguments(self, parser):
        parser.add_argument("--policy", type=int, default=0, help="Policy version number (0 = base).")
        parser.add_argument("--prompts", type=int, default=16, help="How many prompts to sample.")
        parser.add_argument("--samples", type=int, default=2, help="Completions per comparison (2..8).")
        parser.add_argument(
            "--enqueue", action="store_true", help="Send to the Celery gpu queue instead of running here."
        )

    def handle(self, *args, policy: int, prompts: int, samples: int, enqueue: bool, **options):
        if not 2 <= samples <= 8:
            raise CommandError("--samples must be between 2 and 8")
        version = PolicyVersion.objects.filter(number=policy).first()
        if version is None:
            raise CommandError(f"no policy version {policy}; run manage.py prepare_base_model first")
        if enqueue:
            job = services.request_generation(version, prompts, samples=samples)
            self.stdout.write(f"Queued generation job #{job.pk} on the gpu queue.")
            return
        job = services.create_generation_job(version, prompts, samples=samples)
        services.run_generation_job(job)
        job.refresh_from_db()
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"generation failed: {job.error}")
        self.stdout.write(self.style.SUCCESS(f"Created {job.result['comparisons']} comparisons from {version}."))
