from __future__ import annotations

import shutil
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training.ml.export import EXPORT_DTYPES, EXPORT_FORMATS
from training.models import PolicyVersion
from training.services.exports import policy_export


class Command(BaseCommand):
    help = ("Export a policy version: merged into a plain Hugging Face model directory (loads with "
            "AutoModelForCausalLM.from_pretrained, no PrefLoop needed) or as its LoRA adapter.")

    def add_arguments(self, parser):
        parser.add_argument("version", type=int, help="policy version number (as on its page)")
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="merged")
        parser.add_argument("--out", required=True, type=Path, help="a folder that does not exist yet")
        parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32",
                            help="dtype of the merged weights (merged in fp32, then cast)")

    def handle(self, *args, version: int, format: str, out: Path, dtype: str = "fp32", **options):
        chosen = PolicyVersion.objects.filter(number=version).first()
        if chosen is None:
            raise CommandError(f"there is no policy version {version}")
        if out.exists():
            raise CommandError(f"{out} already exists; name a new folder")
        try:
            folder = policy_export(chosen, format, dtype)
        except ValueError as error:
            raise CommandError(str(error)) from None
        shutil.copytree(folder, out)
        self.stdout.write(self.style.SUCCESS(f"Wrote {chosen} ({format}, {dtype}) to {out}."))
