"""Outside trainers in the loop (docs/outside-trainer.md): list a run's versions, upload
a policy trained elsewhere as its next version, pull the labels its answers earn by
cursor, and download the run's latest reward model. Mounted under /runs beside
api/routers/runs.py. Researchers only: a trainer runs with a researcher's token."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import File, Form, Query, Router, Schema
from ninja.files import UploadedFile
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from training.ml.export import iter_tar
from training.models import PolicyVersion, RewardModelVersion, Run
from training.services.evaluation import lineage_versions
from training.services.exports import reward_model_export
from training.services.outside_policies import (
    UploadRefused,
    UploadTooLarge,
    settled_preferences,
    upload_limit,
    upload_outside_policy,
)
from training.services.runs import latest_reward_model

router = Router(tags=["outside trainers"], auth=staff_token)


class VersionOut(Schema):
    number: int
    run_id: int
    parent: int | None
    method: str = Field(description="a PrefLoop method, `outside` for an upload, empty for the base")
    form: str = Field(description="base, adapter or merged")
    is_head: bool = Field(description="the run's own rounds start from it")
    created_at: datetime


def version_out(version: PolicyVersion, run: Run, numbers: dict[int, int] | None = None) -> dict:
    """`numbers`: version id → number of the versions at hand, so a list reads no parent twice."""
    form = "base" if version.is_base else ("adapter" if version.adapter_dir else "merged")
    parent = None
    if version.parent_id:
        parent = (numbers or {}).get(version.parent_id) or version.parent.number
    return {"number": version.number, "run_id": version.run_id, "method": version.method, "form": form,
            "parent": parent, "is_head": version.pk == run.head_id, "created_at": version.created_at}


class UploadIn(Schema):
    form: Literal["adapter", "merged"] = Field("adapter", description="a LoRA adapter folder, or a whole model")
    parent: int | None = Field(None, description="the version it was trained from; the run's head by default")
    compare_prompts: int = Field(0, ge=0, le=1000, description="prompts it answers against its parent, queued "
                                                               "as comparisons")
    make_head: bool = Field(False, description="the run's own rounds start from it next")
    note: str = Field("", max_length=2000, description="kept with the version (how it was trained, a commit)")


class PreferenceQuery(Schema):
    since: int = Field(0, ge=0, description="the `next` of the page before; 0 for the first")
    limit: int = Field(500, ge=1, le=5000)


class UploadOut(Schema):
    version: VersionOut
    checked: dict = Field(description="what the checks found: rank and target modules of an adapter, parameters, "
                                      "whether it was loaded and run for one token")
    job_id: int | None = Field(description="the generation job in which it answers prompts against its parent")


class Answer(Schema):
    messages: list[dict]
    policy_version: int | None
    external_source: str | None


class Pair(Schema):
    chosen: Answer
    rejected: Answer


class PreferenceRow(Schema):
    label_id: int
    comparison_id: int
    prompt: list[dict]
    choice: str
    strength: int | None
    origin: str = Field(description="human or simulated")
    created_at: datetime
    pairs: list[Pair] = Field(description="the (chosen, rejected) pairs the label implies: one, or K·(K−1)/2 for "
                                          "a ranking of K answers")


class PreferencePageOut(Schema):
    rows: list[PreferenceRow]
    next: int = Field(description="pass as `since` to read on; the same as `since` when nothing new has settled")
    unsettled: int = Field(description="newer labels still within PREFLOOP_UNDO_SECONDS (they may be undone); "
                                       "they come in a later page")


@router.get("/{run_id}/versions", response={200: list[VersionOut], 404: Error}, summary="List a run's versions")
def list_versions(request, run_id: int):
    """The run's lineage, base first: a branch lists the versions it descends from too."""
    run = get_object_or_404(Run, pk=run_id)
    versions = lineage_versions(run)  # a version's parent is in its lineage too
    numbers = {v.pk: v.number for v in versions}
    return [version_out(v, run, numbers) for v in versions]


@router.post("/{run_id}/versions", response={201: UploadOut, 400: Error, 404: Error, 413: Error},
             summary="Upload a policy trained outside PrefLoop")
def upload_version(request, run_id: int, file: File[UploadedFile], details: Form[UploadIn]):
    """A multipart upload `file`: a .tar, .tar.gz or .zip of a PEFT LoRA adapter folder
    (`form=adapter`, safetensors, on the parent's base model) or of a whole model folder
    (`form=merged`, the base's architecture and shape; the base's tokenizer is added if
    it has none). Checked against the base tensor by tensor and, for a small base, loaded
    and run for one token; all or nothing: 400 names the problem and leaves no version and
    no files; 413 over PREFLOOP_MAX_POLICY_UPLOAD_BYTES. `parent`: the version it was
    trained from (the run's head by default). `compare_prompts`: that many prompts get two
    answers from it and one from its parent, queued as comparisons (poll `job_id`).
    `make_head`: the run's own rounds start from it next."""
    run = get_object_or_404(Run.objects.select_related("head"), pk=run_id)
    if file.size is not None and file.size > upload_limit():
        return 413, {"error": f"the upload is larger than {upload_limit()} bytes (PREFLOOP_MAX_POLICY_UPLOAD_BYTES)"}
    start = None
    if details.parent is not None:
        start = PolicyVersion.objects.filter(number=details.parent).first()
        if start is None:
            return 400, {"error": f"there is no version v{details.parent}"}
    try:
        uploaded = upload_outside_policy(run, file, details.form, filename=file.name or "", parent=start,
                                         uploaded_by=request.auth, note=details.note,
                                         compare_prompts=details.compare_prompts, make_head=details.make_head)
    except UploadTooLarge as error:
        return 413, {"error": str(error)}
    except UploadRefused as error:
        return 400, {"error": f"Nothing was published: {error}"}
    run.refresh_from_db(fields=["head"])
    version = uploaded.version
    return 201, {"version": version_out(version, run), "checked": version.config["checked"],
                 "job_id": uploaded.job.pk if uploaded.job else None}


@router.get("/{run_id}/preferences", response={200: PreferencePageOut, 404: Error},
            summary="Pull the run's labels since a cursor")
def pull_preferences(request, run_id: int, cursor: Query[PreferenceQuery]):
    """The labels with a preference that the run learns from, by id, after the label id
    `since` (0: from the start), each in exactly one page: a label comes once it can no
    longer be undone (PREFLOOP_UNDO_SECONDS after it was given). Keep `next` and ask again
    with `since=next`."""
    run = get_object_or_404(Run, pk=run_id)
    page = settled_preferences(run, cursor.since, cursor.limit)
    return {"rows": page.rows, "next": page.next_cursor, "unsettled": page.unsettled}


@router.get("/{run_id}/reward-model", response={404: Error},
            summary="Download the run's latest reward model",
            openapi_extra={"responses": {200: {"description": "a tar of a plain Hugging Face sequence-classification "
                                                              "model with prefloop_export.json (docs/exporting.md)",
                                               "content": {"application/x-tar": {"schema": {"type": "string",
                                                                                            "format": "binary"}}}}}})
def download_reward_model(request, run_id: int, version: int | None = None,
                          dtype: Literal["fp32", "bf16", "fp16"] = "fp32"):
    """The newest reward model of the run (or the one it inherited), or reward model
    `version`; the export is built once, then served from var/exports/."""
    run = get_object_or_404(Run, pk=run_id)
    chosen = (get_object_or_404(RewardModelVersion, number=version, run=run) if version is not None
              else latest_reward_model(run))
    if chosen is None:
        return 404, {"error": f"run {run.name!r} has no reward model yet"}
    name = f"prefloop-r{chosen.number}"
    response = StreamingHttpResponse(iter_tar(reward_model_export(chosen, dtype), name),
                                     content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response
