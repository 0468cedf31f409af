from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from training import services
from training.models import BakeOff, Job


class Command(BaseCommand):
    help = ("Start a bake-off of a run: each method trains a candidate from the run's head, the candidates answer the "
            "evaluation prompts, and blind comparisons of them go into the labeling queue. Runs its jobs here, one "
            "after another, unless --enqueue.")

    def add_arguments(self, parser):
        parser.add_argument("--run", help="run name (default: the first run)")
        parser.add_argument("--methods", required=True, help="comma-separated method names, e.g. dpo,sft_chosen")
        parser.add_argument("--enqueue", action="store_true",
                            help="send the jobs to the Celery workers instead of running them here")

    def handle(self, *args, run: str | None, methods: str, enqueue: bool, **options):
        names = [name.strip() for name in methods.split(",") if name.strip()]
        dispatch = BakeOff.Dispatch.QUEUE if enqueue else BakeOff.Dispatch.INLINE
        try:
            bakeoff = services.start_bakeoff(services.run_named(run), names, dispatch=dispatch)
        except (services.RunError, ValueError) as error:  # BakeOffError, or an unknown method
            raise CommandError(str(error)) from None
        self.stdout.write(f"Started {bakeoff} of {bakeoff.run.name} from v{bakeoff.start.number}: {', '.join(names)}.")
        if enqueue:
            self.stdout.write("Its jobs are queued; the workers do the work. Follow it on /bakeoffs/"
                              f"{bakeoff.pk}/.")
            return
        bakeoff = services.run_bakeoff_here(
            bakeoff, on_job=lambda job: self.stdout.write(f"Running {Job.Kind(job.kind).label.lower()} #{job.pk}..."))
        for candidate in bakeoff.candidates.select_related("job", "version"):
            outcome = f"v{candidate.version.number}" if candidate.version else f"failed: {candidate.job.error}"
            self.stdout.write(f"  {candidate.method}: {outcome}")
        if bakeoff.status == BakeOff.Status.FAILED:
            raise CommandError(f"{bakeoff} failed: {bakeoff.error}")
        self.stdout.write(self.style.SUCCESS(
            f"{bakeoff}: {bakeoff.comparisons.count()} blind comparisons are in the labeling queue; "
            f"see /bakeoffs/{bakeoff.pk}/."))
