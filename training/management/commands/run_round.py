from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from training import services
from training.models import Job, Round
from training.recipes import RECIPES


class Command(BaseCommand):
    help = "Start a round of a run on the Celery workers (its recipe, or --recipe) and follow it with a progress bar."

    def add_arguments(self, parser):
        parser.add_argument("--run", help="run name (default: the first run)")
        parser.add_argument("--recipe", choices=list(RECIPES), help="stages to walk (default: the run's recipe)")
        parser.add_argument("--no-wait", action="store_true", help="start it and return")

    def handle(self, *args, run: str | None, recipe: str | None, no_wait: bool, **options):
        try:
            round_ = services.start_round(services.run_named(run), recipe, trigger="command line")
        except (services.RoundError, services.RunError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Started {round_} of {round_.run.name} ({round_.recipe_title}: "
                          f"{' → '.join(round_.stages)}); the workers do the work (make demo starts them).")
        if no_wait:
            return
        bar = tqdm(total=1, desc=str(round_), unit="step")
        while round_.status == Round.Status.RUNNING:
            time.sleep(2)
            round_.refresh_from_db()
            job = round_.jobs.order_by("-pk").first()
            if job is not None:
                bar.set_description(f"{round_}: {round_.stage_title}")
                bar.total = max(job.total_steps, 1)
                bar.n = job.step if job.status != Job.Status.SUCCEEDED else bar.total
                bar.refresh()
        bar.close()
        if round_.status == Round.Status.FAILED:
            raise CommandError(f"{round_} failed: {round_.error}")
        after = f" → v{round_.policy_after.number}" if round_.policy_after else ""
        self.stdout.write(self.style.SUCCESS(f"{round_} done: policy v{round_.policy_before.number}{after}."))
