"""Runs: list them, create one, start a round of one. Researchers only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from django.conf import settings
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router, Schema
from ninja.files import UploadedFile
from pydantic import Field, field_validator

from api.auth import staff_token
from api.routers.rounds import RoundOut, round_with_versions
from api.schemas import Error
from training import services
from training.ml.base_model import is_hf_model_dir
from training.ml.methods import METHODS, method_named
from training.models import PolicyVersion, Run
from training.recipes import RECIPES, recipe_named

router = Router(tags=["runs and rounds"], auth=staff_token)


class RunOut(Schema):
    id: int
    name: str
    description: str
    method: str
    recipe: str
    base_model_dir: str
    precision: str
    gradient_checkpointing: str
    sampling_engine: str
    frozen_quantization: str
    head: int | None
    paused: bool

    @staticmethod
    def resolve_head(run: Run) -> int | None:
        return run.head.number if run.head_id else None


class RunIn(Schema):
    """A new run from a base model, with the deployment's default settings for `method`
    (edit them on the run's page)."""

    name: str = Field(min_length=1, max_length=100)
    base_model_dir: str = Field(max_length=1000, description="a local Hugging Face model directory on the server")
    method: str = Field("ppo", description=f"one of {', '.join(METHODS)}")
    description: str = Field("", max_length=2000)
    precision: Literal["auto", "bf16", "fp16", "fp32"] | None = Field(
        None, description="auto, bf16, fp16 or fp32 (auto: bf16 on a recent GPU, fp16 on an older one, fp32 on the "
                          "CPU); the deployment's PREFLOOP_PRECISION by default")
    gradient_checkpointing: Literal["auto", "on", "off"] | None = Field(
        None, description="in policy updates (auto: on on CUDA, off on the CPU); the deployment's "
                          "PREFLOOP_GRADIENT_CHECKPOINTING by default")
    sampling_engine: Literal["transformers", "vllm"] | None = Field(
        None, description="what samples answers (vllm: CUDA with vllm installed, refused otherwise); the "
                          "deployment's PREFLOOP_SAMPLING_ENGINE by default")
    frozen_quantization: Literal["none", "nf4"] | None = Field(
        None, description="4-bit loading of the reward model and the base under the adapter (nf4: CUDA with "
                          "bitsandbytes, refused otherwise); the deployment's PREFLOOP_FROZEN_QUANTIZATION by default")

    @field_validator("name", "base_model_dir", "description")
    @classmethod
    def refuse_nul(cls, value: str) -> str:
        # As Django's form fields do: PostgreSQL cannot store NUL in text.
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str) -> str:
        method_named(value)  # ValueError names the methods
        return value

    @field_validator("base_model_dir")
    @classmethod
    def model_directory(cls, value: str) -> str:
        # Caught here rather than by the first job, minutes later on a worker (as the form does).
        path = Path(value).expanduser()
        if not is_hf_model_dir(path):
            raise ValueError(f"{path} is not a Hugging Face model directory (no config.json there)")
        return str(path.resolve())


class RoundIn(Schema):
    recipe: str | None = Field(None, description=f"one of {', '.join(RECIPES)}; the run's own by default")

    @field_validator("recipe")
    @classmethod
    def known_recipe(cls, value: str | None) -> str | None:
        if value:
            recipe_named(value)
        return value or None


@router.get("", response=list[RunOut], summary="List runs")
def list_runs(request):
    return Run.objects.select_related("head").order_by("pk")


@router.post("", response={201: RunOut, 400: Error}, summary="Create a run")
def create_run(request, new: RunIn):
    try:
        chosen = services.default_settings(new.method)
        for key in ("precision", "gradient_checkpointing", "sampling_engine", "frozen_quantization"):
            if getattr(new, key):
                chosen[key] = getattr(new, key)
        run = services.create_run(new.name, new.base_model_dir, request.auth, new.description,
                                  services.RunSettings(**chosen))
    except ValueError as error:  # RunError, or settings the method refuses
        return 400, {"error": str(error)}
    return 201, run


@router.post("/{run_id}/rounds", response={201: RoundOut, 400: Error, 404: Error}, summary="Start a round")
def start_round(request, run_id: int, round_in: RoundIn):
    """Queues the first stage's job at once; poll `job_ids[-1]` at /jobs/{id}, or the
    round at /rounds/{number}. 400 when the round cannot start (one is running, no labels
    yet, no reward model for a method that needs one)."""
    run = get_object_or_404(Run, pk=run_id)
    try:
        round_ = services.start_round(run, round_in.recipe, requested_by=request.auth)
    except ValueError as error:  # services refuse with ValueError subclasses (RoundError, ...)
        return 400, {"error": str(error)}
    return 201, round_with_versions().get(pk=round_.pk)


class CompletionsImportOut(Schema):
    summary: str
    prompts_created: int
    prompts_present: int
    completions_created: int
    comparisons_created: int
    comparisons_present: int
    job_id: int | None = Field(description="the generation job in which the policy version answers, if asked")


@router.post("/{run_id}/completions", response={201: CompletionsImportOut, 400: Error, 404: Error},
             summary="Import outside systems' answers as comparisons")
def import_completions(request, run_id: int, file: File[UploadedFile], against_version: Form[int | None] = None):
    """A multipart upload `file`: JSONL, a prompt (`prompt` or `messages`) per line with
    `answers` ({system: text}, two or more) or one `system` and `answer` per line. Every
    pair of systems on a prompt becomes a blind comparison in the run's queue; with
    `against_version` (a version number of the run) that version also answers each prompt
    and meets every system. All or nothing; the error names the line. The progress page
    ranks the systems and versions together."""
    run = get_object_or_404(Run, pk=run_id)
    version = None
    if against_version is not None:
        version = PolicyVersion.objects.filter(number=against_version).first()
        if version is None:
            return 400, {"error": f"there is no version v{against_version}"}
    data = file.read(settings.PREFLOOP_MAX_IMPORT_BYTES + 1)  # one byte past the limit: reported, not cut
    try:
        result = services.import_external_completions(run, file.name or "", data, against_version=version,
                                                      requested_by=request.auth)
    except ValueError as error:
        return 400, {"error": f"Nothing was imported: {error}"}
    return 201, {"summary": result.summary(), "prompts_created": result.prompts_created,
                 "prompts_present": result.prompts_present, "completions_created": result.completions_created,
                 "comparisons_created": result.comparisons_created, "comparisons_present": result.comparisons_present,
                 "job_id": result.job.pk if result.job else None}
