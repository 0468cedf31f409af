from __future__ import annotations

import shutil
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training.ml.export import EXPORT_DTYPES
from training.models import RewardModelVersion
from training.services.exports import reward_model_export


class Command(BaseCommand):
    help = ("Export a reward model version merged into a plain AutoModelForSequenceClassification directory; "
            "config.json carries prefloop_reward_mean and prefloop_reward_std (normalized = (logit - mean) / std).")

    def add_arguments(self, parser):
        parser.add_argument("version", type=int, help="reward model version number")
        parser.add_argument("--out", required=True, type=Path, help="a folder that does not exist yet")
        parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32",
                            help="dtype of the merged weights (merged in fp32, then cast)")

    def handle(self, *args, version: int, out: Path, dtype: str = "fp32", **options):
        chosen = RewardModelVersion.objects.filter(number=version).first()
        if chosen is None:
            raise CommandError(f"there is no reward model version {version}")
        if out.exists():
            raise CommandError(f"{out} already exists; name a new folder")
        shutil.copytree(reward_model_export(chosen, dtype), out)
        self.stdout.write(self.style.SUCCESS(f"Wrote reward model {version} to {out}."))
