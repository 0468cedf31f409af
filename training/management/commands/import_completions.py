from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training import services
from training.models import PolicyVersion


class Command(BaseCommand):
    help = ("Import answers of outside systems (JSONL: prompt + answers per system) as blind comparisons of a run, "
            "all or nothing.")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--run", required=True, help="name of the run whose queue gets the comparisons")
        parser.add_argument("--against-version", metavar="N|head",
                            help="a version of the run (a number, or 'head') that answers the same prompts on the "
                                 "gpu queue; its answers are compared with the systems'")

    def handle(self, *args, file: Path, run: str, against_version: str | None, **options):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        try:
            chosen = services.run_named(run)
        except services.RunError as error:
            raise CommandError(str(error)) from None
        version = None
        if against_version == "head":
            version = chosen.head
        elif against_version is not None:
            if not against_version.isdigit():
                raise CommandError("--against-version takes a version number or 'head'")
            version = PolicyVersion.objects.filter(number=int(against_version)).first()
            if version is None:
                raise CommandError(f"no policy version {against_version}")
        try:
            result = services.import_external_completions(chosen, file.name, file.read_bytes(),
                                                          against_version=version)
        except ValueError as error:
            raise CommandError(f"{file}: nothing imported: {error}") from None
        self.stdout.write(self.style.SUCCESS(result.summary()))
