from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from training import services
from training.models import Job, Round


class Command(BaseCommand):
    help = "Start a round on the Celery workers (full: reward model, PPO, comparisons) and follow it."

    def add_arguments(self, parser):
        parser.add_argument("--ppo-only", action="store_true", help="PPO and comparisons, with the latest reward model")
        parser.add_argument("--no-wait", action="store_true", help="start it and return")

    def handle(self, *args, ppo_only: bool, no_wait: bool, **options):
        try:
            round_ = services.start_round(Round.Kind.PPO if ppo_only else Round.Kind.FULL, trigger="command line")
        except services.RoundError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Started {round_}; the workers do the work (make demo starts them).")
        if no_wait:
            return
        bar = tqdm(total=1, desc=str(round_), unit="step")
        while round_.status == Round.Status.RUNNING:
            time.sleep(2)
            round_.refresh_from_db()
            job = round_.jobs.order_by("-pk").first()
            if job is not None:
                bar.set_description(f"{round_}: {round_.get_stage_display()}")
                bar.total = max(job.total_steps, 1)
                bar.n = job.step if job.status != Job.Status.SUCCEEDED else bar.total
                bar.refresh()
        bar.close()
        if round_.status == Round.Status.FAILED:
            raise CommandError(f"{round_} failed: {round_.error}")
        self.stdout.write(self.style.SUCCESS(
            f"{round_} done: policy v{round_.policy_before.number} → v{round_.policy_after.number}."
        ))
