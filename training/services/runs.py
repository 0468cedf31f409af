"""Runs: lineages of policy versions and reward models, each with its own settings.

A run starts from a base model (a new root version, with no adapter) or branches from
any version of another run; it then learns from its own labels and, for a branch, from
its parent's labels up to the moment it branched. Settings come from the environment
only as defaults for a new run; after that the run's page is where they change, and a
job pins them when it is created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max

from labeling.models import Label
from training.ml.base_model import BaseModelError, prepare_base_model
from training.ml.configs import ConfigError, SettingNames, config_from_dict, config_to_dict, values_from_settings
from training.ml.engines import setting_refusal as engine_setting_refusal
from training.ml.methods import method_named
from training.ml.quantization import setting_refusal as quantization_setting_refusal
from training.ml.reward_training import RewardTrainingConfig
from training.models import PolicyVersion, RewardModelVersion, Run
from training.recipes import default_recipe_for, recipe_named

log = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "default"


class RunError(ValueError):
    """A run cannot be created or changed like that; the message says why."""


def deployment_defaults(config_class: type, names: SettingNames) -> dict:
    """A config as a new run gets it: the dataclass defaults, with the fields that the
    config (or its method's registry entry) names a setting for taken from that setting."""
    values = values_from_settings(config_class, names, lambda name: getattr(settings, name))
    return config_to_dict(config_from_dict(config_class, values))


def method_defaults(method: str) -> dict:
    entry = method_named(method)
    return deployment_defaults(entry.config_class, entry.deployment_defaults)


def reward_defaults() -> dict:
    return deployment_defaults(RewardTrainingConfig, RewardTrainingConfig.DEPLOYMENT_DEFAULTS)


def default_settings(method: str = "ppo") -> dict:
    """A new run's settings: the environment's defaults, with the recipe that fits the
    method (training/recipes.py default_recipe_for)."""
    return {
        "method": method,
        "method_config": method_defaults(method),
        "reward_config": reward_defaults(),
        "recipe": default_recipe_for(method),
        "query_selection": settings.PREFLOOP_QUERY_SELECTION,
        "update_prompts": settings.PREFLOOP_PPO_PROMPTS,
        "comparison_prompts": settings.PREFLOOP_ROUND_COMPARISON_PROMPTS,
        "auto_loop": settings.PREFLOOP_AUTO_LOOP,
        "loop_min_labels": settings.PREFLOOP_LOOP_MIN_LABELS,
        "reward_auto_train_labels": settings.PREFLOOP_RM_AUTO_TRAIN_LABELS,
        "precision": settings.PREFLOOP_PRECISION,
        "gradient_checkpointing": settings.PREFLOOP_GRADIENT_CHECKPOINTING,
        "sampling_engine": settings.PREFLOOP_SAMPLING_ENGINE,
        "frozen_quantization": settings.PREFLOOP_FROZEN_QUANTIZATION,
    }


@dataclass(frozen=True)
class RunSettings:
    """The editable settings of a run, checked as a whole."""

    method: str
    method_config: dict
    reward_config: dict
    recipe: str
    query_selection: str
    update_prompts: int
    comparison_prompts: int
    auto_loop: bool
    loop_min_labels: int
    reward_auto_train_labels: int
    precision: str = Run.Precision.AUTO
    """Of every model the run's jobs load and train (training/ml/precision.py)."""
    gradient_checkpointing: str = Run.GradientCheckpointing.AUTO
    """In the run's policy updates (training/ml/methods/base.py)."""
    sampling_engine: str = Run.SamplingEngine.TRANSFORMERS
    """What samples the run's answers (training/ml/engines.py)."""
    frozen_quantization: str = Run.FrozenQuantization.NONE
    """4-bit loading of its jobs' frozen weights (training/ml/quantization.py)."""

    def checked(self) -> RunSettings:
        """The same settings with complete, validated configs, or RunError."""
        try:
            method = method_named(self.method)
            recipe_named(self.recipe)
            method_config = config_to_dict(method.config(self.method_config))
            reward_config = config_to_dict(config_from_dict(RewardTrainingConfig, self.reward_config))
        except ConfigError as error:
            raise RunError(str(error)) from None
        except ValueError as error:
            raise RunError(str(error)) from None
        if self.query_selection not in Run.QuerySelection.values:
            raise RunError(f"query selection must be one of {', '.join(Run.QuerySelection.values)}")
        if self.update_prompts < 1 or self.comparison_prompts < 1 or self.loop_min_labels < 1:
            raise RunError("prompt counts and the automatic-loop threshold must be at least 1")
        if self.reward_auto_train_labels < 0:
            raise RunError("the automatic reward-model threshold cannot be negative")
        if self.precision not in Run.Precision.values:
            raise RunError(f"precision must be one of {', '.join(Run.Precision.values)}")
        if self.gradient_checkpointing not in Run.GradientCheckpointing.values:
            raise RunError(f"gradient checkpointing must be one of {', '.join(Run.GradientCheckpointing.values)}")
        # Whether the installation can honour them: a setting no worker could run is
        # refused now rather than failing its first job (the job checks its device too).
        if why := engine_setting_refusal(self.sampling_engine):
            raise RunError(why)
        if why := quantization_setting_refusal(self.frozen_quantization):
            raise RunError(why)
        return RunSettings(**{**self.__dict__, "method_config": method_config, "reward_config": reward_config})


def settings_of(run: Run) -> RunSettings:
    return RunSettings(run.method, run.method_config, run.reward_config, run.recipe, run.query_selection,
                       run.update_prompts, run.comparison_prompts, run.auto_loop, run.loop_min_labels,
                       run.reward_auto_train_labels, run.precision, run.gradient_checkpointing,
                       run.sampling_engine, run.frozen_quantization)


def next_version_number() -> int:
    last = PolicyVersion.objects.aggregate(last=Max("number"))["last"]
    return 0 if last is None else last + 1


@transaction.atomic
def create_run(name: str, base_model_dir: str, created_by: AbstractBaseUser | None = None, description: str = "",
               run_settings: RunSettings | None = None) -> Run:
    """A run from a base model: a new root version (the base itself) becomes its head."""
    name = name.strip()
    if not name:
        raise RunError("a run needs a name")
    if Run.objects.filter(name=name).exists():
        raise RunError(f"there is already a run called {name!r}")
    chosen = (run_settings or RunSettings(**default_settings())).checked()
    run = Run.objects.create(name=name, description=description, base_model_dir=str(base_model_dir),
                             created_by=created_by, **chosen.__dict__)
    root = PolicyVersion.objects.create(number=next_version_number(), run=run, base_model_dir=str(base_model_dir))
    run.base_version = run.head = root
    run.save(update_fields=["base_version", "head"])
    return run


@transaction.atomic
def branch_run(source: PolicyVersion, name: str, created_by: AbstractBaseUser | None = None,
               description: str = "") -> Run:
    """A new run whose head is `source` (a version of another run): it continues from
    that version's adapter, keeps its parent's settings (edit them after), learns from
    the parent's labels so far, and uses the parent's latest reward model until it
    trains its own."""
    name = name.strip()
    if not name:
        raise RunError("a run needs a name")
    if Run.objects.filter(name=name).exists():
        raise RunError(f"there is already a run called {name!r}")
    parent = source.run
    run = Run.objects.create(
        name=name, description=description or f"Branched from v{source.number} of {parent.name}.",
        base_model_dir=parent.base_model_dir, base_version=parent.base_version, head=source, parent_run=parent,
        branched_from=source, inherited_label_id=Label.objects.aggregate(last=Max("pk"))["last"] or 0,
        inherited_reward_model=latest_reward_model(parent), created_by=created_by,
        **settings_of(parent).checked().__dict__,
    )
    return run


@transaction.atomic
def update_run_settings(run: Run, new: RunSettings) -> Run:
    """Save checked settings. Queued jobs keep the config they pinned."""
    checked = new.checked()
    locked = Run.objects.select_for_update().get(pk=run.pk)
    for key, value in checked.__dict__.items():
        setattr(locked, key, value)
    locked.save()
    return locked


GUIDELINES_MAX_CHARS = 20_000


def set_guidelines(run: Run, text: str) -> Run:
    """Save a run's labeling guidelines (Markdown; the labeling page renders them like
    model output, so no HTML runs). RunError for text that cannot be stored anywhere."""
    text = text.replace("\r\n", "\n").strip()
    if "\x00" in text:
        raise RunError("the guidelines contain a NUL character")
    if len(text) > GUIDELINES_MAX_CHARS:
        raise RunError(f"the guidelines are {len(text):,} characters; the limit is {GUIDELINES_MAX_CHARS:,}")
    run.guidelines = text
    run.save(update_fields=["guidelines"])
    return run


def latest_reward_model(run: Run) -> RewardModelVersion | None:
    """The run's newest reward model, or (for a branch that has none yet) the one it
    inherited."""
    own = RewardModelVersion.objects.filter(run=run).order_by("-number").first()
    return own or run.inherited_reward_model


@dataclass(frozen=True)
class RewardModelListing:
    versions: list[RewardModelVersion]
    unlisted_refits: int
    """Older head refits left out so they do not push the full retrains off the list."""


def reward_models_to_list(run: Run, newest: int = 5, full_retrains: int = 20) -> RewardModelListing:
    """What a run page lists of its reward models: the `newest` versions of either kind,
    then older full retrains. A refit after every label would otherwise fill the list
    with refits within minutes and hide every full retrain."""
    versions = run.reward_models.select_related("backbone").order_by("-number")
    listed = list(versions[:newest])
    if listed:
        listed += list(versions.filter(update=RewardModelVersion.Update.FULL,
                                       number__lt=listed[-1].number)[:full_retrains])
    unlisted = versions.filter(update=RewardModelVersion.Update.REFIT).exclude(pk__in=[v.pk for v in listed]).count()
    return RewardModelListing(listed, unlisted)


def default_run() -> Run | None:
    """The first run: the one `make demo` and the commands use unless told otherwise."""
    return Run.objects.order_by("pk").first()


def run_named(name: str | None) -> Run:
    run = default_run() if name is None else Run.objects.filter(name=name).first()
    if run is None:
        raise RunError(f"no run called {name!r}" if name else "there is no run yet: run manage.py prepare_base_model")
    return run


def ensure_default_run() -> Run:
    """The default run on the configured base model (PREFLOOP_BASE_MODEL_DIR), converted
    from the bundled GGUF when the setting points at our default location and nothing is
    there yet. A database upgraded from before runs gets complete settings here."""
    model_dir = settings.PREFLOOP_BASE_MODEL_DIR
    default_dir = settings.VAR_DIR / "models" / "smollm2-135m-instruct"
    prepare_base_model(model_dir, convert_smollm2_if_missing=(model_dir == default_dir))
    run = default_run()
    if run is None:
        return create_run(DEFAULT_RUN_NAME, str(model_dir), description="Created by prepare_base_model.")
    base = run.base_version
    if base.base_model_dir != str(model_dir):
        # Versions are immutable: completions already stored say they came from this base.
        if base.completions.exists():
            raise BaseModelError(
                f"run {run.name}'s base is {base.base_model_dir} and has completions; PREFLOOP_BASE_MODEL_DIR now "
                f"says {model_dir}. Create a new run for a different base model instead."
            )
        base.base_model_dir = run.base_model_dir = str(model_dir)
        base.save(update_fields=["base_model_dir"])
        run.save(update_fields=["base_model_dir"])
    if not run.method_config or not run.reward_config:  # upgraded from before runs
        defaults = default_settings(run.method or "ppo")
        run.method_config = run.method_config or defaults["method_config"]
        run.reward_config = run.reward_config or defaults["reward_config"]
        run.save(update_fields=["method_config", "reward_config"])
    return run


def pause_runs(user: AbstractBaseUser, reason: str = "", runs=None) -> int:
    """Stop the given runs (all of them by default: the labeling page's stop button is
    an emergency brake). Returns how many were running."""
    with transaction.atomic():
        chosen = Run.objects.select_for_update().filter(paused=False)
        if runs is not None:
            chosen = chosen.filter(pk__in=[r.pk for r in runs])
        stopped = list(chosen)
        for run in stopped:
            run.pause(user, reason)
    log.warning("%s run(s) stopped by %s: %s", len(stopped), user, reason or "no reason given")
    return len(stopped)

