from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from labeling.exporting import write_jsonl
from labeling.models import PreferenceDataset
from labeling.preference_datasets import EXPORT_FORMATS, export_rows


class Command(BaseCommand):
    help = "Write an imported preference dataset as TRL JSONL (explicit prompt)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="conversational")
        parser.add_argument("--out", type=Path, help="File to write (default: standard output).")

    def handle(self, *args, name: str, format: str, out: Path | None, **options):
        dataset = PreferenceDataset.objects.filter(name=name, status=PreferenceDataset.Status.READY).first()
        if dataset is None:
            raise CommandError(f"no ready dataset named {name!r}")
        try:
            if out is None:
                count = write_jsonl(export_rows(dataset, format), sys.stdout)
            else:  # written aside and renamed: a refused export leaves no half file
                partial = out.with_name(out.name + ".partial")
                with open(partial, "w", encoding="utf-8") as file:
                    count = write_jsonl(export_rows(dataset, format), file)
                partial.replace(out)
        except ValueError as error:
            if out is not None:
                out.with_name(out.name + ".partial").unlink(missing_ok=True)
            raise CommandError(str(error)) from None
        self.stderr.write(f"Wrote {count} pairs.")
