from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from labeling.importing import PromptFileError, import_prompt_file


class Command(BaseCommand):
    help = "Import prompts from a JSONL or CSV file, all or nothing."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        try:
            result = import_prompt_file(file.name, file.read_bytes(), settings.PREFLOOP_MAX_IMPORT_BYTES)
        except PromptFileError as error:
            raise CommandError(f"{file}: nothing imported: {error}") from None
        self.stdout.write(
            self.style.SUCCESS(f"Imported {result.created} prompts ({result.duplicates} already present, skipped).")
        )
