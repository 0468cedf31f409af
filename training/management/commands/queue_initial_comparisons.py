from __future__ import annotations

from django.core.management.base import BaseCommand

from labeling.models import Comparison
from training import services
from training.models import Job, PolicyVersion


class Command(BaseCommand):
    help = "Queue a generation job on the gpu queue unless the base policy already has enough comparisons."

    def add_arguments(self, parser):
        parser.add_argument("--prompts", type=int, default=16)

    def handle(self, *args, prompts: int, **options):
        base = PolicyVersion.objects.get(number=0)
        existing = Comparison.objects.filter(source=Comparison.Source.INITIAL).count()
        unfinished = Job.objects.filter(kind=Job.Kind.GENERATE).exclude(status__in=Job.FINISHED).exists()
        if existing >= prompts or unfinished:
            self.stdout.write(f"{existing} initial comparisons exist or are being made; nothing queued.")
            return
        job = services.request_generation(base, prompts - existing)
        self.stdout.write(f"Queued generation job #{job.pk} for {prompts - existing} prompts on the gpu queue.")
