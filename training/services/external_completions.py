"""Answers of outside systems (other models, human writers) imported as blind comparisons
of a run, optionally with a policy version of the run answering the same prompts, so
that the progress page ranks the systems and the run's versions on one scale
(training/games.py). The file format and its checks: labeling/external_completions.py."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from labeling.external_completions import CompletionFileError, parse_completion_file, store_external_completions
from training.models import Job, PolicyVersion, Run
from training.services.evaluation import lineage_versions
from training.services.generation import create_answers_versus_job
from training.services.jobs import enqueue_on_commit


@dataclass(frozen=True)
class ImportResult:
    prompts_created: int
    prompts_present: int
    completions_created: int
    comparisons_created: int
    comparisons_present: int
    """Pairs of systems the run already had from an earlier import: not queued again."""
    job: Job | None
    """The generation job in which the chosen policy version answers the prompts."""

    def summary(self) -> str:
        text = (f"Imported {self.completions_created} answers to {self.prompts_created + self.prompts_present} "
                f"prompts ({self.prompts_created} new) and queued {self.comparisons_created} comparisons")
        if self.comparisons_present:
            text += f" ({self.comparisons_present} pairs already queued by an earlier import, skipped)"
        if self.job is not None:
            text += (f"; generation job #{self.job.pk} has v{self.job.params['policy_version']} answer the "
                     f"same prompts and queues its answers against the systems'")
        return text + "."


def import_external_completions(run: Run, filename: str, data: bytes, *, against_version: PolicyVersion | None = None,
                                requested_by: AbstractBaseUser | None = None,
                                rng: random.Random | None = None) -> ImportResult:
    """Import a file of outside systems' answers (labeling/external_completions.py) into
    `run`'s queue, all or nothing: CompletionFileError (a ValueError) naming the line, and
    nothing stored, when any line is wrong. With `against_version` (a version of the
    run's lineage), a generation job (sent to the gpu queue once committed) has it answer
    every prompt of the file, and compares its answer with each system's; a prompt then
    needs one system's answer, otherwise two."""
    if against_version is not None and against_version.pk not in {v.pk for v in lineage_versions(run)}:
        raise CompletionFileError(f"v{against_version.number} is not a version of run {run.name!r}")
    entries = parse_completion_file(filename, data, settings.PREFLOOP_MAX_IMPORT_BYTES,
                                    min_systems=1 if against_version is not None else 2)
    with transaction.atomic():
        stored = store_external_completions(run, entries, source=PurePath(filename).name, rng=rng)
        job = None
        if against_version is not None:
            job = create_answers_versus_job(run, against_version, stored.completions_by_prompt, requested_by)
            enqueue_on_commit(job)
    return ImportResult(stored.prompts_created, stored.prompts_present, stored.completions_created,
                        stored.comparisons_created, stored.comparisons_present, job)
