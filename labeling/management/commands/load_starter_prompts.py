from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand

STARTER_PROMPTS = Path(__file__).resolve().parents[2] / "fixtures" / "starter_prompts.jsonl"


class Command(BaseCommand):
    help = "Load the bundled starter prompts (advice, explanation, coding, writing, factual, refusal, multi-turn)."

    def handle(self, *args, **options):
        call_command("import_prompts", str(STARTER_PROMPTS), stdout=self.stdout)
