from __future__ import annotations

import signal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from experiments.designs import DesignError, parse_design
from experiments.driving import CeleryDriver, DriverError, InlineDriver
from experiments.results import experiment_summary
from experiments.services import ExperimentError, create_experiment, planned_jobs, run_experiment
from training.models import Job


def stop_on_sigterm(signum, frame):
    # `kill` or a supervisor stopping the command: unwind like Ctrl-C, so the experiment
    # and the job in hand are marked failed instead of "running" forever.
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


class Command(BaseCommand):
    help = ("Run an experiment design (TOML; docs/experiments.md) unattended: inline in this process, or through "
            "the Celery workers. Exactly one of --inline and --celery; --celery never falls back to inline.")

    def add_arguments(self, parser):
        parser.add_argument("design", help="the design file (TOML)")
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--inline", action="store_true", help="run every job in this process")
        mode.add_argument("--celery", action="store_true", help="send every job to the Celery workers and wait")

    def handle(self, *args, design: str, inline: bool, celery: bool, **options):
        path = Path(design)
        try:
            text = path.read_text()
            parsed = parse_design(text, base_dir=path.resolve().parent)
        except (OSError, DesignError) as error:
            raise CommandError(f"{path}: {error}") from None
        bar = tqdm(desc=parsed.name, unit="job")
        experiment = None

        def show_progress() -> None:
            bar.n = Job.objects.filter(run__experiment_arm__experiment=experiment, status__in=Job.FINISHED).count()
            bar.refresh()

        driver = InlineDriver(show_progress) if inline else CeleryDriver(show_progress)
        if celery:
            try:
                driver.check_ready()  # before anything is created: a broker that is down is an error
            except DriverError as error:
                bar.close()
                raise CommandError(str(error)) from None
        experiment = create_experiment(parsed, driver.mode, design_text=text)
        bar.total = planned_jobs(experiment)
        self.stdout.write(f"{experiment}: {bar.total} jobs, {driver.mode}; the page is /experiments/{experiment.pk}/")
        previous_handler = signal.signal(signal.SIGTERM, stop_on_sigterm)
        try:
            run_experiment(experiment, driver)
        except (ExperimentError, DriverError, ValueError) as error:
            raise CommandError(f"{experiment} failed: {error}") from None
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            bar.close()
        summary = experiment_summary(experiment)
        for row in summary["arms"]:
            self.stdout.write(f"  {row['arm']}: final gold {row['final_gold']}, gain {row['gain']}, "
                              f"proxy {row['final_proxy']}, KL {row['kl']}")
        self.stdout.write(self.style.SUCCESS(f"{experiment}: {summary['verdict']}"))
