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

from labeling.models import ImportedPair, PreferenceDataset
from labeling.preference_datasets import PreferenceFileError, import_dataset
from training.ml.reward import PreferencePair
from training.models import Job, Run, RunDataset
from training.services.jobs import enqueue_on_commit, job_type

log = logging.getLogger(__name__)

FOR_REWARD_MODEL = "for_reward_model"
FOR_METHODS = "for_methods"
MAX_WEIGHT = 10.0


class DatasetError(ValueError):
    """A dataset cannot be imported or used as asked; the message says why."""


def upload_dir() -> Path:
    return Path(settings.PREFLOOP_UPLOAD_DIR) / "datasets"


def start_dataset_import(name: str, upload: IO[bytes], filename: str, description: str = "",
                         requested_by: AbstractBaseUser | None = None) -> tuple[PreferenceDataset, Job]:
    """Keep the uploaded file, create the (importing) dataset and queue the job that
    checks and writes it. The file is copied in chunks: a large dataset never sits in
    memory."""
    name = name.strip()
    if not name:
        raise DatasetError("give the dataset a name")
    # A failed import holds no pairs and no run uses it: its name is free for the fixed file.
    PreferenceDataset.objects.filter(name=name, status=PreferenceDataset.Status.FAILED).delete()
    if PreferenceDataset.objects.filter(name=name).exists():
        raise DatasetError(f"a dataset named {name!r} already exists")
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{secrets.token_hex(8)}.jsonl"
    size = 0
    with open(path, "wb") as out:
        while chunk := upload.read(1 << 20):
            size += len(chunk)
            if size > settings.PREFLOOP_MAX_DATASET_BYTES:
                out.close()
                path.unlink()
                raise DatasetError(f"the file is over the limit of {settings.PREFLOOP_MAX_DATASET_BYTES} bytes "
                                   "(PREFLOOP_MAX_DATASET_BYTES)")
            out.write(chunk)
    try:
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
    return dataset, job


@job_type(Job.Kind.IMPORT_DATASET, queue="default")
def run_dataset_import_job(job: Job) -> PreferenceDataset | None:
    dataset = PreferenceDataset.objects.get(pk=job.params["dataset"])
    path = Path(job.params["path"])
    try:
        import_dataset(dataset, path, on_progress=lambda done, total: job.report_progress(done, total))
    except Exception as error:
        if not isinstance(error, PreferenceFileError):
            log.exception("import of %s failed", dataset)
        job.mark_failed(f"nothing imported: {dataset.error}")
        path.unlink(missing_ok=True)
        return None
    job.mark_succeeded({"dataset": dataset.pk, "pairs": dataset.pair_count,
                        "skipped_identical": dataset.skipped_identical})
    path.unlink(missing_ok=True)
    return dataset


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
    """The pairs a job's pinned datasets give, and per dataset how many it used. Each
    pair is its own group: its id, negated, so it never meets a comparison's id."""
    rng = random.Random(seed)
    pairs, used = [], []
    for choice in pinned:
        rows = list(ImportedPair.objects.filter(dataset_id=choice["id"]).order_by("pk")
                    .values_list("pk", "prompt", "chosen", "rejected", "strength"))
        if not rows and not PreferenceDataset.objects.filter(pk=choice["id"]).exists():
            raise DatasetError(f"dataset {choice['name']} was deleted after this job was queued")
        picked = weighted_indices(len(rows), choice["weight"], rng)
        for index in picked:
            pk, prompt, chosen, rejected, strength = rows[index]
            pairs.append(PreferencePair(-pk, prompt, chosen, rejected, strength))
        used.append({**choice, "pairs": len(picked)})
    return pairs, used
