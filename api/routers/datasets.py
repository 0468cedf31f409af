"""Preference datasets: import one (a background job; poll it), list them, read one,
download it, and choose which runs train on it. Researchers only."""

from __future__ import annotations

from datetime import datetime

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router, Schema
from ninja.files import UploadedFile
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from labeling.exporting import jsonl_lines
from labeling.models import PreferenceDataset
from labeling.preference_datasets import check_export, export_rows
from training import services
from training.models import Run

router = Router(tags=["datasets"], auth=staff_token)


class DatasetOut(Schema):
    id: int
    name: str
    description: str
    status: str = Field(description="importing, ready or failed")
    error: str = Field(description="why the import failed, naming the line")
    pair_count: int
    skipped_identical: int
    formats: list[str]
    strength_cutpoints: list[float]
    source_filename: str
    created_at: datetime


class DatasetImportOut(Schema):
    dataset: DatasetOut
    job_id: int = Field(description="poll /jobs/{job_id} for its progress")


class RunDatasetIn(Schema):
    weight: float = Field(1.0, gt=0, le=10, description="share of its pairs each training uses (2: each twice)")
    for_reward_model: bool = True
    for_methods: bool = Field(True, description="DPO, SFT on chosen and the other pair-learning methods")


class RunDatasetOut(Schema):
    run: int
    dataset: int
    weight: float
    for_reward_model: bool
    for_methods: bool

    @staticmethod
    def resolve_run(choice) -> int:
        return choice.run_id

    @staticmethod
    def resolve_dataset(choice) -> int:
        return choice.dataset_id


@router.post("", response={202: DatasetImportOut, 400: Error}, summary="Import a preference dataset")
def import_dataset(request, file: File[UploadedFile], name: Form[str], description: Form[str] = ""):
    """A multipart upload: `name`, optional `description`, and `file`, a JSONL file of
    TRL standard or conversational pairs (explicit or implicit prompt) or Anthropic
    HH-RLHF transcripts, with optional `score_chosen` / `score_rejected`. The import runs
    in the background, all or nothing: poll the job, then the dataset, whose `error`
    names the first bad line."""
    try:
        dataset, job = services.start_dataset_import(name, file, file.name or "", description, request.auth)
    except services.DatasetError as error:
        return 400, {"error": str(error)}
    return 202, {"dataset": dataset, "job_id": job.pk}


@router.get("", response=list[DatasetOut], summary="List preference datasets")
def list_datasets(request):
    return PreferenceDataset.objects.order_by("pk")


@router.get("/{dataset_id}", response={200: DatasetOut, 404: Error}, summary="Read a preference dataset")
def read_dataset(request, dataset_id: int):
    return get_object_or_404(PreferenceDataset, pk=dataset_id)


@router.get("/{dataset_id}/pairs", response={200: None, 400: Error, 404: Error},
            summary="Download a dataset's pairs (streamed JSONL)")
def download_pairs(request, dataset_id: int, format: str = "conversational"):
    """TRL rows with an explicit prompt, one a line: `conversational` (message lists)
    or `standard` (strings; only for one-turn prompts)."""
    dataset = get_object_or_404(PreferenceDataset, pk=dataset_id, status=PreferenceDataset.Status.READY)
    try:
        check_export(dataset, format)
    except ValueError as error:
        return 400, {"error": str(error)}
    return StreamingHttpResponse(jsonl_lines(export_rows(dataset, format)), content_type="application/jsonl")


@router.put("/{dataset_id}/runs/{run_id}", response={200: RunDatasetOut, 400: Error, 404: Error},
            summary="Train a run on a dataset")
def use_dataset(request, dataset_id: int, run_id: int, choice: RunDatasetIn):
    """Adds the dataset to the run's reward model and/or pair methods, or changes its
    weight. Jobs already queued keep what they pinned."""
    dataset = get_object_or_404(PreferenceDataset, pk=dataset_id)
    run = get_object_or_404(Run, pk=run_id)
    try:
        return services.use_dataset(run, dataset, choice.weight, choice.for_reward_model, choice.for_methods)
    except services.DatasetError as error:
        return 400, {"error": str(error)}


@router.delete("/{dataset_id}/runs/{run_id}", response={204: None, 404: Error}, summary="Stop training a run on it")
def stop_using_dataset(request, dataset_id: int, run_id: int):
    if not services.stop_using_dataset(get_object_or_404(Run, pk=run_id),
                                       get_object_or_404(PreferenceDataset, pk=dataset_id)):
        return 404, {"error": "the run does not train on this dataset"}
    return 204, None
