from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from labeling import exporting


class Command(BaseCommand):
    help = ("Write labels as TRL preference JSONL (prompt/chosen/rejected; not bake-off or experiment labels), "
            "or every label with --raw.")

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path)
        parser.add_argument("--raw", action="store_true", help="Every label with its annotator and timing.")

    def handle(self, *args, out: Path, raw: bool, **options):
        partial = out.with_name(out.name + ".partial")
        with partial.open("w", encoding="utf-8") as handle:
            count = exporting.write_jsonl(exporting.export_rows(raw, chunk_size=500), handle)
        partial.replace(out)  # a reader never sees half a file
        self.stdout.write(self.style.SUCCESS(f"Wrote {count} rows to {out}."))
