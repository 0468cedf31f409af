"""Publishing trained artifacts (policy adapters, reward models): one function, so every
job publishes the same way. The trainer writes into a side folder named after the job;
a manifest with the artifact format version is added; the folder is renamed to its
version number and the version row is created last, in one transaction. A failure or a
killed worker at any point leaves no row and no folder that looks complete."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Max
from django.utils import timezone

from training.ml.loading import ARTIFACT_FILE, ARTIFACT_FORMAT_VERSION
from training.models import Job
from webhooks.services import record_published

log = logging.getLogger(__name__)

Produced = TypeVar("Produced")
Row = TypeVar("Row", bound=models.Model)

FOLDERS = {"policy": "policies", "reward_model": "reward-models"}
# Two jobs publishing at the same moment on PostgreSQL may pick the same number; the
# loser tries the next one.
PUBLISH_ATTEMPTS = 5


def partial_dir(kind: str, job: Job) -> Path:
    return Path(settings.PREFLOOP_ARTIFACT_DIR) / FOLDERS[kind] / f"job{job.pk}.partial"


def publish_artifact(
    kind: str,
    job: Job,
    model_class: type[Row],
    write: Callable[[Path], Produced],
    manifest: Callable[[Produced], dict],
    create_row: Callable[[int, Path, Produced], Row],
) -> tuple[Row, Produced]:
    """`write(folder)` trains and writes the artifact; `manifest(produced)` says what it
    is; `create_row(number, folder, produced)` registers it. Returns the new row, and what
    `write` produced (for the job's summary)."""
    side = partial_dir(kind, job)
    work = side.with_name(side.name + ".trainer")  # trainers' scratch space
    shutil.rmtree(side, ignore_errors=True)  # left by a crashed attempt
    for leftover in side.parent.glob(f".{side.name}.launch-*"):  # an accelerate launch's inputs (ml/launch.py)
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        produced = write(side)
        stamp = {"format_version": ARTIFACT_FORMAT_VERSION, "kind": kind, "job": job.pk, "run": job.run_id,
                 "written_at": timezone.now().isoformat(), **manifest(produced)}
        (side / ARTIFACT_FILE).write_text(json.dumps(stamp, indent=2, default=str))
        row = register(side, model_class, lambda number, folder: create_row(number, folder, produced), job)
        return row, produced
    finally:
        shutil.rmtree(side, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def register(side: Path, model_class: type[Row], create_row: Callable[[int, Path], Row], job: Job | None) -> Row:
    """Rename `side` to the next version's folder and create its row, in one transaction.
    `job`: the job publishing it (None for an upload through the API, which no one can
    cancel midway)."""
    for _ in range(PUBLISH_ATTEMPTS):
        try:
            with transaction.atomic():
                if job is not None:
                    job.raise_if_cancelled()  # a cancel (services.jobs.cancel_job) after this waits for the commit
                number = (model_class.objects.aggregate(last=Max("number"))["last"] or 0) + 1
                final = side.with_name(f"v{number}")
                if final.exists():
                    raise FileExistsError(f"{final} exists but no version row points at it; move it away")
                side.rename(final)
                try:
                    row = create_row(number, final)
                    # In the same transaction: the event exists if and only if the version does.
                    record_published(model_class.__name__, row)
                    return row
                except Exception:
                    final.rename(side)
                    raise
        except IntegrityError:
            log.info("version number taken by another job just now; trying the next one")
    raise RuntimeError(f"could not find a free {model_class.__name__} number in {PUBLISH_ATTEMPTS} attempts")
