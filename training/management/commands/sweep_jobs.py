from __future__ import annotations

from django.core.management.base import BaseCommand

from training.services.job_recovery import sweep_jobs


class Command(BaseCommand):
    help = ("Make lost jobs converge once: send again pending jobs whose broker message is gone and running "
            "jobs whose worker went silent, and fire automatic reward-model triggers an outage lost. Celery "
            "beat runs the same sweep every PREFLOOP_SWEEP_SECONDS.")

    def handle(self, *args, **options):
        report = sweep_jobs()
        for name, what in (("resent", "sent again (message lost)"), ("restarted", "sent again (worker silent)"),
                           ("failed", "failed"), ("triggered", "requested (lost trigger)")):
            jobs = getattr(report, name)
            if jobs:
                self.stdout.write(f"{what}: " + ", ".join(f"#{pk}" for pk in jobs))
        if report.broker_error:
            self.stderr.write(f"the broker could not be reached: {report.broker_error}")
        if not any((report.resent, report.restarted, report.failed, report.triggered, report.broker_error)):
            self.stdout.write("Every job is where it should be.")
