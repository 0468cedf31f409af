from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction
from tqdm import tqdm

from labeling.models import PreferenceDataset
from labeling.preference_datasets import PreferenceFileError, import_dataset


class Command(BaseCommand):
    help = ("Import a preference dataset (TRL standard or conversational JSONL, Anthropic HH-RLHF, optional "
            "score_chosen/score_rejected) under a name, all or nothing, in this process.")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--name", required=True, help="The dataset's name (unique).")
        parser.add_argument("--description", default="")

    def handle(self, *args, file: Path, name: str, description: str, **options):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        try:
            with transaction.atomic():  # a savepoint: a taken name leaves the caller's transaction usable
                dataset = PreferenceDataset.objects.create(name=name, description=description,
                                                           source_filename=file.name)
        except IntegrityError:
            raise CommandError(f"a dataset named {name!r} already exists") from None
        with tqdm(total=1, unit="line", desc=f"import {name}", disable=options["verbosity"] == 0) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                import_dataset(dataset, file, on_progress=progress)
            except PreferenceFileError as error:
                raise CommandError(f"{file}: nothing imported: {error}") from None
        self.stdout.write(self.style.SUCCESS(
            f"Imported {dataset.pair_count} pairs into dataset {name!r} ({', '.join(dataset.formats)}"
            + (f"; {dataset.skipped_identical} lines with identical answers skipped" if dataset.skipped_identical
               else "") + ")."))
