from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from labeling.models import Comparison
from training import services
from training.models import Job


class Command(BaseCommand):
    help = "Queue a generation job on the gpu queue unless the run's base already has enough comparisons."

    def add_arguments(self, parser):
        parser.add_argument("--prompts", type=int, default=16)
        parser.add_argument("--run", help="run name (default: the first run)")

    def handle(self, *args, prompts: int, run: str | None, **options):
        try:
            chosen = services.run_named(run)
        except services.RunError as error:
            raise CommandError(str(error)) from None
        existing = Comparison.objects.filter(run=chosen, source=Comparison.Source.INITIAL).count()
        unfinished = Job.objects.filter(run=chosen, kind=Job.Kind.GENERATE).exclude(status__in=Job.FINISHED).exists()
        if existing >= prompts or unfinished:
            self.stdout.write(f"{existing} initial comparisons exist or are being made; nothing queued.")
            return
        job = services.request_generation(chosen, chosen.base_version, prompts - existing)
        self.stdout.write(f"Queued generation job #{job.pk} for {prompts - existing} prompts on the gpu queue.")
