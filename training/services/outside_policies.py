"""Outside trainers in the loop: a policy trained elsewhere (OpenRLHF, verl, a team's own
TRL script) becomes a version of a run, and the labels its answers earn go back to it.

An upload is an archive of a LoRA adapter on the run's base, or of a whole merged model.
It is unpacked into a side folder under the artifacts root, checked against the base
(training/ml/policy_upload.py), and published as artifacts.py publishes a trained
version: the folder renamed to its version number and the row created in one
transaction, with the generation job that has it answer prompts against its parent if
asked. A refused or failed upload leaves no row and no folder.

Labels go out by cursor (`settled_preferences`): each label once, in id order, once it
can no longer be undone."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch
from django.utils import timezone

from labeling.models import ComparisonItem, Completion, Label
from training.ml.loading import ARTIFACT_FILE, ARTIFACT_FORMAT_VERSION
from training.ml.policy_upload import ArchiveLimits, UploadRefused, check_policy, unpack_archive
from training.models import OUTSIDE_METHOD, Job, PolicyVersion, Run
from training.services.artifacts import FOLDERS, register
from training.services.evaluation import lineage_versions
from training.services.generation import create_generation_job
from training.services.jobs import enqueue_on_commit
from training.services.reward_models import preference_labels

__all__ = ["UploadRefused", "UploadTooLarge", "UploadedPolicy", "settled_preferences", "upload_outside_policy"]


class UploadTooLarge(UploadRefused):
    """Over PREFLOOP_MAX_POLICY_UPLOAD_BYTES (the API answers 413)."""


@dataclass(frozen=True)
class UploadedPolicy:
    version: PolicyVersion
    job: Job | None
    """The generation job in which it answers prompts against its parent, if asked."""


ABANDONED_AFTER = timedelta(days=1)
"""An upload's side folders older than this were left by a process killed mid-upload (no
upload takes a day): the next upload removes them."""


def remove_abandoned_uploads(policies: Path) -> None:
    cutoff = (timezone.now() - ABANDONED_AFTER).timestamp()
    for leftover in policies.glob("upload-*"):
        if leftover.stat().st_mtime < cutoff:
            shutil.rmtree(leftover, ignore_errors=True)


def upload_limit() -> int:
    return settings.PREFLOOP_MAX_POLICY_UPLOAD_BYTES


def save_archive(upload: IO[bytes], path: Path) -> str:
    """Copy the upload to `path`, counting (a client's declared size is a claim).
    Returns its SHA-256, kept with the version so a team can tell which file it was."""
    digest, written, limit = hashlib.sha256(), 0, upload_limit()
    with path.open("wb") as out:
        while block := upload.read(1 << 20):
            written += len(block)
            if written > limit:
                raise UploadTooLarge(f"the upload is larger than {limit} bytes (PREFLOOP_MAX_POLICY_UPLOAD_BYTES)")
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def upload_outside_policy(
    run: Run, upload: IO[bytes], form: str, *, filename: str = "", parent: PolicyVersion | None = None,
    uploaded_by: AbstractBaseUser | None = None, note: str = "", compare_prompts: int = 0, make_head: bool = False,
) -> UploadedPolicy:
    """Publish an outside trainer's policy as the next version of `run`, a child of
    `parent` (the run's head by default; any version of its lineage). `form`: "adapter"
    (a PEFT LoRA adapter on the parent's base model) or "merged" (a whole model of the
    base's architecture and shape). With `compare_prompts`, a generation job (sent to the
    gpu queue once committed) has it answer that many prompts, two answers each, and
    each first answer meets the parent's: comparisons in /label/, win rates on
    /progress/. `make_head`: it becomes the head, where the run's own rounds start
    (unless a round moved the head meanwhile). UploadRefused (a ValueError) says why
    nothing was published."""
    parent = parent or run.head
    if parent.pk not in {v.pk for v in lineage_versions(run)}:
        raise UploadRefused(f"v{parent.number} is not a version of run {run.name!r}")
    if compare_prompts < 0:
        raise UploadRefused("compare_prompts must be 0 or more")
    policies = Path(settings.PREFLOOP_ARTIFACT_DIR) / FOLDERS["policy"]
    policies.mkdir(parents=True, exist_ok=True)
    remove_abandoned_uploads(policies)
    token = uuid.uuid4().hex
    # Both names end in neither a version number nor a job's: nothing reads them as published.
    scratch, side = policies / f"upload-{token}.partial", policies / f"upload-{token}.checked"
    try:
        scratch.mkdir()
        sha256 = save_archive(upload, scratch / "archive")
        limits = ArchiveLimits(max_bytes=upload_limit(), max_files=settings.PREFLOOP_MAX_POLICY_UPLOAD_FILES)
        folder = unpack_archive(scratch / "archive", scratch / "unpacked", limits)
        found = check_policy(Path(parent.base_model_dir), folder, form)
        folder.rename(side)
        inputs = {"origin": OUTSIDE_METHOD, "form": form, "start_version": parent.number,
                  "archive": filename[:200], "sha256": sha256, "note": note[:2000],
                  "uploaded_by": uploaded_by.get_username() if uploaded_by else None}
        (side / ARTIFACT_FILE).write_text(json.dumps(
            {"format_version": ARTIFACT_FORMAT_VERSION, "kind": "policy", "run": run.pk, "method": OUTSIDE_METHOD,
             "base_model_dir": parent.base_model_dir, "written_at": timezone.now().isoformat(), "inputs": inputs,
             "checked": found}, indent=2))
        job = None

        def create_row(number: int, final: Path) -> PolicyVersion:
            nonlocal job
            version = PolicyVersion.objects.create(
                number=number, run=run, parent=parent, method=OUTSIDE_METHOD,
                base_model_dir=parent.base_model_dir if form == "adapter" else str(final),
                adapter_dir=str(final) if form == "adapter" else "", config={"checked": found}, inputs=inputs)
            if make_head:
                Run.objects.filter(pk=run.pk, head=parent).update(head=version)
            if compare_prompts:
                job = create_generation_job(run, version, compare_prompts, uploaded_by, samples=2,
                                            versus=[parent.number])
                enqueue_on_commit(job)
            return version

        version = register(side, PolicyVersion, create_row, job=None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(side, ignore_errors=True)  # renamed away once published
    return UploadedPolicy(version, job)


@dataclass(frozen=True)
class PreferencePage:
    rows: list[dict]
    next_cursor: int
    """Pass it as `since` for the next page; equal to `since` when nothing new was settled."""
    unsettled: int
    """Newer labels that may still be undone: they come in a later page."""


def settled_preferences(run: Run, since: int, limit: int) -> PreferencePage:
    """The run's preference labels (those its own reward models and methods learn from:
    its lineage's, not bake-offs', not on evaluation prompts) with an id above `since`,
    by id, at most `limit`. Only labels older than PREFLOOP_UNDO_SECONDS: an annotator
    may undo a newer one, and a trainer that had pulled it would keep a label that no
    longer exists. The cursor never passes a label that may still change, so each label
    is in exactly one page."""
    settled_before = timezone.now() - timedelta(seconds=settings.PREFLOOP_UNDO_SECONDS)
    newer = preference_labels(run).filter(pk__gt=since)
    unsettled = newer.filter(created_at__gt=settled_before)
    first_unsettled = unsettled.order_by("pk").values_list("pk", flat=True).first()
    page = newer.filter(created_at__lte=settled_before)
    if first_unsettled is not None:
        page = page.filter(pk__lt=first_unsettled)
    items = ComparisonItem.objects.select_related("completion__policy_version").order_by("position")
    labels = list(page.select_related("comparison__prompt")
                  .prefetch_related(Prefetch("comparison__items", queryset=items)).order_by("pk")[:limit])
    return PreferencePage([preference_row(label) for label in labels], labels[-1].pk if labels else since,
                          unsettled.count())


def preference_row(label: Label) -> dict:
    """A label as a trainer reads it: the prompt and each (chosen, rejected) pair it
    implies in TRL's conversational format, with who wrote each answer."""

    def answer(completion: Completion) -> dict:
        return {"messages": [{"role": "assistant", "content": completion.text}],
                "policy_version": completion.policy_version.number if completion.policy_version_id else None,
                "external_source": completion.external_source or None}

    completions = [item.completion for item in label.comparison.items.all()]
    return {"label_id": label.pk, "comparison_id": label.comparison_id, "prompt": label.comparison.prompt.messages,
            "choice": label.choice, "strength": label.strength, "origin": label.origin,
            "created_at": label.created_at,
            "pairs": [{"chosen": answer(chosen), "rejected": answer(rejected)}
                      for chosen, rejected in label.preference_pairs(completions)]}
