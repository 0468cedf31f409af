from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from labeling import exporting


class Command(BaseCommand):
    help = ("Write one run's labels as TRL preference JSONL (prompt/chosen/rejected, each row with its run; not "
            "bake-off or experiment labels), or every label with --raw.")

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path)
        parser.add_argument("--raw", action="store_true", help="Every label with its annotator and timing.")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--run", help="The run, by id or name; may be left out while there is only one run.")
        which.add_argument("--all-runs", action="store_true", help="Every run's labels (each row names its run).")

    def handle(self, *args, out: Path, raw: bool, run: str | None, all_runs: bool, **options):
        try:
            chosen = exporting.export_run(exporting.ALL_RUNS if all_runs else run)
        except exporting.ExportRunError as error:
            raise CommandError(f"nothing exported: {error} (--run, or --all-runs)") from None
        partial = out.with_name(out.name + ".partial")
        with partial.open("w", encoding="utf-8") as handle:
            count = exporting.write_jsonl(exporting.export_rows(raw, chosen, chunk_size=500), handle)
        partial.replace(out)  # a reader never sees half a file
        of = f"run {chosen.name}" if chosen else "every run"
        self.stdout.write(self.style.SUCCESS(f"Wrote {count} rows of {of} to {out}."))
