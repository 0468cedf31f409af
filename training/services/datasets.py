"""Imported preference datasets in a run's training: importing one in the background
(a job with a progress bar), choosing which of its trainings a run feeds it to, and
turning a job's pinned choice into pairs.

The parsing and writing are labeling.preference_datasets; this module adds what needs
runs and jobs. A job pins the run's datasets and their weights when it is created, so
changing the choice later never changes a queued job, and a version records what it
learned from.
"""

from __future__ import annotations

import logging
import random
import secrets
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from labeling.models import ImportedPair, PreferenceDataset, conversation_hash
from labeling.preference_datasets import ImportSuperseded, PreferenceFileError, fail_import, import_dataset
from training.ml.preference_pairs import PreferencePair
from training.models import Job, Run, RunDataset
from training.services.jobs import enqueue_on_commit, job_type

log = logging.getLogger(__name__)

FOR_REWARD_MODEL = "for_reward_model"
FOR_METHODS = "for_methods"
MAX_WEIGHT = 10.0
NAME_LENGTH = 100
ROWS_PER_QUERY = 500  # ids per IN (...): far below SQLite's and PostgreSQL's parameter limits


class DatasetError(ValueError):
    """A dataset cannot be imported or used as asked; the message says why."""


def upload_dir() -> Path:
    return Path(settings.PREFLOOP_UPLOAD_DIR) / "datasets"


def start_dataset_import(name: str, upload: IO[bytes], filename: str, description: str = "",
                         requested_by: AbstractBaseUser | None = None) -> tuple[PreferenceDataset, Job]:
    """Keep the uploaded file, create the (importing) dataset and queue the job that
    checks and writes it. The file is copied in chunks: a large dataset never sits in
    memory. Nothing is left behind when this refuses."""
    name = name.strip()
    check_name(name, description)
    # A failed import holds no pairs and no run uses it: its name is free for the fixed file.
    PreferenceDataset.objects.filter(name=name, status=PreferenceDataset.Status.FAILED).delete()
    if PreferenceDataset.objects.filter(name=name).exists():
        raise DatasetError(f"a dataset named {name!r} already exists")
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{secrets.token_hex(8)}.jsonl"
    try:
        copy_upload(upload, path)
        with transaction.atomic():
            dataset = PreferenceDataset.objects.create(name=name, description=description,
                                                       source_filename=Path(filename).name[:255],
                                                       created_by=requested_by)
            job = Job.objects.create(kind=Job.Kind.IMPORT_DATASET, requested_by=requested_by,
                                     params={"dataset": dataset.pk, "path": str(path)})
            enqueue_on_commit(job)
    except IntegrityError:  # the same name, a moment earlier
        path.unlink(missing_ok=True)
        raise DatasetError(f"a dataset named {name!r} already exists") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return dataset, job


def check_name(name: str, description: str) -> None:
    if not name:
        raise DatasetError("give the dataset a name")
    if len(name) > NAME_LENGTH:
        raise DatasetError(f"the name is longer than {NAME_LENGTH} characters")
    if "\x00" in name or "\x00" in description:  # PostgreSQL cannot store NUL in text
        raise DatasetError("the name or description contains a NUL character")


def copy_upload(upload: IO[bytes], path: Path) -> None:
    size = 0
    with open(path, "wb") as out:
        while chunk := upload.read(1 << 20):
            size += len(chunk)
            if size > settings.PREFLOOP_MAX_DATASET_BYTES:
                raise DatasetError(f"the file is over the limit of {settings.PREFLOOP_MAX_DATASET_BYTES} bytes "
                                   "(PREFLOOP_MAX_DATASET_BYTES)")
            out.write(chunk)


@job_type(Job.Kind.IMPORT_DATASET, queue="default")
def run_dataset_import_job(job: Job) -> PreferenceDataset | None:
    """Import the job's upload. A job sent again finds the dataset as its last attempt
    left it: ready (done: nothing to redo), failed (nothing to redo either), or still
    importing (started over; an older attempt still running stops at its next batch)."""
    dataset = PreferenceDataset.objects.filter(pk=job.params["dataset"]).first()
    path = Path(job.params["path"])
    if dataset is None or dataset.status != PreferenceDataset.Status.IMPORTING:
        if dataset is not None and dataset.is_ready:
            job.mark_succeeded({"dataset": dataset.pk, "pairs": dataset.pair_count})
        else:
            job.mark_failed("nothing imported: " + (dataset.error if dataset else "the dataset was deleted"))
        path.unlink(missing_ok=True)
        return dataset
    attempt = job.attempts

    def still_current() -> bool:
        return Job.objects.filter(pk=job.pk, attempts=attempt, status=Job.Status.RUNNING).exists()

    try:
        import_dataset(dataset, path, on_progress=lambda done, total: job.report_progress(done, total),
                       still_current=still_current)
    except ImportSuperseded:
        log.warning("import of %s: attempt %s was superseded by a newer one", dataset, attempt)
        return None
    except Exception as error:
        if not isinstance(error, PreferenceFileError):
            log.exception("import of %s failed", dataset)
        dataset.refresh_from_db()
        job.mark_failed(f"nothing imported: {dataset.error}")
        path.unlink(missing_ok=True)
        return None
    job.mark_succeeded({"dataset": dataset.pk, "pairs": dataset.pair_count,
                        "skipped_identical": dataset.skipped_identical, "skipped_ties": dataset.skipped_ties})
    path.unlink(missing_ok=True)
    return dataset


def clean_up_after_import_job(job: Job) -> None:
    """After any job (the loop's on_job_finished): an import job that ended without finishing its dataset (the
    broker was unreachable, the sweep gave up on a worker that kept dying) fails it, so
    it holds no pairs and its name is free again, and removes the upload."""
    if job.kind != Job.Kind.IMPORT_DATASET or job.status == Job.Status.SUCCEEDED:
        return
    dataset = PreferenceDataset.objects.filter(pk=job.params.get("dataset")).first()
    if dataset is not None and dataset.status == PreferenceDataset.Status.IMPORTING:
        fail_import(dataset, job.error or f"the import job ended {job.status}")
    if job.params.get("path"):
        Path(job.params["path"]).unlink(missing_ok=True)


# ------------------------------------------------------------------ a run's datasets


def use_dataset(run: Run, dataset: PreferenceDataset, weight: float = 1.0, for_reward_model: bool = True,
                for_methods: bool = True) -> RunDataset:
    """Feed the dataset to the run's reward model and/or its pair-learning methods, or
    change its weight. Jobs already queued keep what they pinned."""
    if not dataset.is_ready:
        raise DatasetError(f"{dataset.name} is not ready ({dataset.status})")
    if not 0 < weight <= MAX_WEIGHT:
        raise DatasetError(f"the weight must be above 0 and at most {MAX_WEIGHT:g} (remove the dataset to drop it)")
    if not (for_reward_model or for_methods):
        raise DatasetError("choose the reward model, the methods or both (remove the dataset to drop it)")
    choice, _ = RunDataset.objects.update_or_create(
        run=run, dataset=dataset,
        defaults={"weight": weight, "for_reward_model": for_reward_model, "for_methods": for_methods})
    return choice


def stop_using_dataset(run: Run, dataset: PreferenceDataset) -> bool:
    return RunDataset.objects.filter(run=run, dataset=dataset).delete()[0] > 0


def pinned_datasets(run: Run, purpose: str) -> list[dict]:
    """What a job created now pins: the run's ready datasets for this purpose."""
    choices = (RunDataset.objects.filter(run=run, dataset__status=PreferenceDataset.Status.READY, **{purpose: True})
               .select_related("dataset").order_by("dataset_id"))
    return [{"id": c.dataset_id, "name": c.dataset.name, "weight": c.weight} for c in choices]


def has_dataset_pairs(run: Run, purpose: str) -> bool:
    return bool(pinned_datasets(run, purpose))


def weighted_indices(count: int, weight: float, rng: random.Random) -> list[int]:
    """Indices into `count` pairs, each pair `weight` times in expectation: every pair
    floor(weight) times, plus a random sample of round(frac · count) more, drawn without
    repeats (so weight 0.25 is an exact random quarter)."""
    whole, fraction = int(weight), weight - int(weight)
    chosen = [i for i in range(count) for _ in range(whole)]
    chosen += rng.sample(range(count), round(fraction * count))
    return sorted(chosen)


def dataset_pairs(pinned: list[dict], seed: int) -> tuple[list[PreferencePair], list[dict]]:
    """The pairs a job's pinned datasets give, and per dataset how many it used. Pairs
    on one prompt form one group (held out together, batched together, as a comparison's
    pairs are): the prompt's hash, negated, so it never meets a comparison's id. Only the
    sampled rows are read."""
    rng = random.Random(seed)
    pairs, used = [], []
    for choice in pinned:
        ids = list(ImportedPair.objects.filter(dataset_id=choice["id"]).order_by("pk").values_list("pk", flat=True))
        if not ids and not PreferenceDataset.objects.filter(pk=choice["id"], status="ready").exists():
            raise DatasetError(f"dataset {choice['name']} was deleted after this job was queued")
        picked = [ids[i] for i in weighted_indices(len(ids), choice["weight"], rng)]
        rows = {}
        for start in range(0, len(picked), ROWS_PER_QUERY):
            chunk = set(picked[start:start + ROWS_PER_QUERY]) - rows.keys()
            rows.update((row[0], row) for row in ImportedPair.objects.filter(pk__in=chunk).values_list(
                "pk", "prompt", "chosen", "rejected", "strength"))
        for pk in picked:
            _, prompt, chosen, rejected, strength = rows[pk]
            group = -int(conversation_hash(prompt)[:12], 16) - 1
            pairs.append(PreferencePair(group, prompt, chosen, rejected, strength, imported=True))
        used.append({**choice, "pairs": len(picked)})
    return pairs, used
