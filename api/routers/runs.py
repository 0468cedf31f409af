"""Runs: list them, create one, read and change one's settings, start a round of one.
Researchers only. Settings are checked by the same code as the run page's form
(training/services/runs.py RunSettings, the config dataclasses' declared ranges): a
refusal is 400, as every service's, with every problem at once: `{"error": ...,
"fields": {"method.x": ...}}` (a body of the wrong shape is 422, as everywhere)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router, Schema
from ninja.files import UploadedFile
from pydantic import Field, field_validator

from api.auth import staff_token
from api.routers.rounds import RoundOut, round_with_versions
from api.schemas import Error, SettingsError
from training import services
from training.ml.base_model import is_hf_model_dir
from training.ml.configs import bounds_of
from training.ml.methods import METHODS, method_named
from training.models import PolicyVersion, Run
from training.recipes import RECIPES, recipe_named

router = Router(tags=["runs and rounds"], auth=staff_token)

RUN_SETTING_BOUNDS = {field.name: bounds_of(field) for field in dataclasses.fields(services.RunSettings)}


def loop_number(name: str, description: str):
    """An optional whole-number setting, its range (declared on RunSettings) in the
    schema for clients; the check itself is RunSettings', which names every problem."""
    bounds = RUN_SETTING_BOUNDS[name]
    return Field(None, description=f"{description} ({bounds.low:g} to {bounds.high:g})",
                 json_schema_extra={"minimum": bounds.low, "maximum": bounds.high})


PRECISIONS = Literal["auto", "bf16", "fp16", "fp32"]
CHECKPOINTING = Literal["auto", "on", "off"]
ENGINES = Literal["transformers", "vllm"]
QUANTIZATIONS = Literal["none", "nf4"]
QUERY_SELECTIONS = Literal["disagreement", "random"]


class RunSettingsOut(Schema):
    """A run's settings as its page shows them: the method's and the reward model's
    complete configs, and the loop's own settings."""

    method: str
    method_config: dict[str, Any]
    reward_config: dict[str, Any]
    recipe: str
    query_selection: str
    update_prompts: int
    comparison_prompts: int
    auto_loop: bool
    loop_min_labels: int
    reward_auto_train_labels: int
    precision: str
    gradient_checkpointing: str
    sampling_engine: str
    frozen_quantization: str


class RunSettingsChange(Schema):
    """The settings to change; what is left out keeps its value. `method_config` and
    `reward_config` change the fields they name (a new `method` starts from that
    method's defaults). Each config field's range is its dataclass's (docs/runs-and-methods.md)."""

    method: str | None = Field(None, description=f"one of {', '.join(METHODS)}")
    method_config: dict[str, Any] | None = Field(None, description="fields of the method's config to change")
    reward_config: dict[str, Any] | None = Field(None, description="fields of the reward-model config to change")
    recipe: str | None = Field(None, description=f"one of {', '.join(RECIPES)}")
    query_selection: QUERY_SELECTIONS | None = None
    update_prompts: int | None = loop_number("update_prompts", "prompts per policy update")
    comparison_prompts: int | None = loop_number("comparison_prompts", "prompts that get new comparisons a round")
    auto_loop: bool | None = None
    loop_min_labels: int | None = loop_number("loop_min_labels", "new labels per automatic round")
    reward_auto_train_labels: int | None = loop_number("reward_auto_train_labels",
                                                       "new labels that train a reward model by themselves; 0: off")
    precision: PRECISIONS | None = None
    gradient_checkpointing: CHECKPOINTING | None = None
    sampling_engine: ENGINES | None = None
    frozen_quantization: QUANTIZATIONS | None = None

    def changes(self) -> dict[str, Any]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


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
    and what the body gives (change them after on the run's page or PATCH .../settings)."""

    name: str = Field(min_length=1, max_length=100)
    base_model_dir: str = Field(max_length=1000, description="a local Hugging Face model directory on the server")
    method: str = Field("ppo", description=f"one of {', '.join(METHODS)}")
    description: str = Field("", max_length=2000)
    precision: PRECISIONS | None = Field(
        None, description="auto, bf16, fp16 or fp32 (auto: bf16 on a recent GPU, fp16 on an older one, fp32 on the "
                          "CPU); the deployment's PREFLOOP_PRECISION by default")
    gradient_checkpointing: CHECKPOINTING | None = Field(
        None, description="in policy updates (auto: on on CUDA, off on the CPU); the deployment's "
                          "PREFLOOP_GRADIENT_CHECKPOINTING by default")
    sampling_engine: ENGINES | None = Field(
        None, description="what samples answers (vllm: CUDA with vllm installed, refused otherwise); the "
                          "deployment's PREFLOOP_SAMPLING_ENGINE by default")
    frozen_quantization: QUANTIZATIONS | None = Field(
        None, description="4-bit loading of the reward model and the base under the adapter (nf4: CUDA with "
                          "bitsandbytes, refused otherwise); the deployment's PREFLOOP_FROZEN_QUANTIZATION by default")
    method_config: dict[str, Any] | None = Field(None, description="fields of the method's config over its defaults")
    reward_config: dict[str, Any] | None = Field(None, description="fields of the reward-model config over the "
                                                                   "deployment's defaults")

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


@router.post("", response={201: RunOut, 400: SettingsError}, summary="Create a run")
def create_run(request, new: RunIn):
    """400 when the run cannot be created (its name is taken), or with `fields` when a
    setting is out of its range or the installation cannot run it (every one at once)."""
    try:
        chosen = services.RunSettings(**services.default_settings(new.method))
        changes = {key: getattr(new, key) for key in ("precision", "gradient_checkpointing", "sampling_engine",
                                                      "frozen_quantization", "method_config", "reward_config")
                   if getattr(new, key)}
        run = services.create_run(new.name, new.base_model_dir, request.auth, new.description,
                                  services.settings_with(chosen, changes))
    except services.SettingsRefused as refused:
        return 400, settings_refusal(refused)
    except ValueError as error:  # RunError
        return 400, {"error": str(error)}
    return 201, run


def settings_refusal(refused: services.SettingsRefused) -> dict:
    return {"error": f"settings not saved: {refused}", "fields": refused.fields}


@router.get("/{run_id}/settings", response={200: RunSettingsOut, 404: Error}, summary="Read a run's settings")
def run_settings(request, run_id: int):
    return services.settings_of(get_object_or_404(Run, pk=run_id)).__dict__


@router.patch("/{run_id}/settings", response={200: RunSettingsOut, 400: SettingsError, 404: Error},
              summary="Change a run's settings")
def change_run_settings(request, run_id: int, change: RunSettingsChange):
    """The run page's settings form as JSON: the same checks, every problem of the body
    at once under `fields` ("method.learning_rate", "reward.heldout_fraction",
    "update_prompts", "recipe"), nothing saved then. Jobs already queued keep theirs."""
    run = get_object_or_404(Run, pk=run_id)
    try:
        saved = services.update_run_settings(run, services.settings_with(services.settings_of(run), change.changes()))
    except services.SettingsRefused as refused:
        return 400, settings_refusal(refused)
    return 200, services.settings_of(saved).__dict__


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
