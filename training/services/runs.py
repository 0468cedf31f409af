"""Runs: lineages of policy versions and reward models, each with its own settings.

A run starts from a base model (a new root version, with no adapter) or branches from
any version of another run; it then learns from its own labels and, for a branch, from
its parent's labels up to the moment it branched. Settings come from the environment
only as defaults for a new run; after that the run's page is where they change, and a
job pins them when it is created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max

from labeling.models import Label
from training.ml.base_model import BaseModelError, prepare_base_model
from training.ml.configs import (
    ConfigError,
    ConfigErrors,
    SettingNames,
    bounded,
    bounds_of,
    config_from_dict,
    config_to_dict,
    values_from_settings,
)
from training.ml.engines import setting_refusal as engine_setting_refusal
from training.ml.methods import method_named
from training.ml.methods.base import REWARD_MODEL
from training.ml.quantization import setting_refusal as quantization_setting_refusal
from training.ml.reward_training import RewardTrainingConfig
from training.models import PolicyVersion, RewardModelVersion, Run
from training.recipes import REWARD_MODEL as REWARD_MODEL_STAGE
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


class SettingsRefused(RunError):
    """Settings with problems: `fields` maps each setting to what is wrong with it
    ("update_prompts", "method.learning_rate", "reward.heldout_fraction"; "" for the
    settings as a whole), every problem of one submit at once."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" if name else message for name, message in fields.items()))
        self.fields = fields


METHOD_CONFIG, REWARD_CONFIG = "method", "reward"
"""The prefixes of a method-config and a reward-config field in SettingsRefused.fields."""


def choices(name: str, values) -> Callable[[str], str | None]:
    """A string field's check: one of `values`."""
    return lambda value: None if value in values else f"{name} must be one of {', '.join(values)}, not {value!r}"


@dataclass(frozen=True)
class RunSettings:
    """The editable settings of a run, checked as a whole. The ranges of the loop's own
    numbers are declared here, as the configs' are on theirs (training/ml/configs.py
    `bounded`): the settings form and the API read them from the fields."""

    method: str
    method_config: dict
    reward_config: dict
    recipe: str
    query_selection: str = bounded(check=choices("query selection", Run.QuerySelection.values))
    update_prompts: int = bounded(minimum=1, maximum=100_000)
    comparison_prompts: int = bounded(minimum=1, maximum=10_000)
    auto_loop: bool = bounded()
    loop_min_labels: int = bounded(minimum=1, maximum=1_000_000)
    reward_auto_train_labels: int = bounded(minimum=0, maximum=1_000_000)
    precision: str = bounded(Run.Precision.AUTO, check=choices("precision", Run.Precision.values))
    """Of every model the run's jobs load and train (training/ml/precision.py)."""
    gradient_checkpointing: str = bounded(Run.GradientCheckpointing.AUTO,
                                          check=choices("gradient checkpointing", Run.GradientCheckpointing.values))
    """In the run's policy updates (training/ml/methods/base.py)."""
    sampling_engine: str = bounded(Run.SamplingEngine.TRANSFORMERS, check=engine_setting_refusal)
    """What samples the run's answers (training/ml/engines.py); refused where the
    installation cannot run it."""
    frozen_quantization: str = bounded(Run.FrozenQuantization.NONE, check=quantization_setting_refusal)
    """4-bit loading of its jobs' frozen weights (training/ml/quantization.py)."""

    def checked(self) -> RunSettings:
        """The same settings with complete, validated configs, or SettingsRefused with
        every problem (each field's range, then each config's rules joining fields)."""
        problems: dict[str, str] = {}
        method_config, reward_config = self.method_config, self.reward_config
        try:
            method = method_named(self.method)
        except ValueError as error:
            problems["method"] = str(error)
        else:
            method_config = config_problems(lambda: method.config(self.method_config), METHOD_CONFIG, problems)
        try:
            recipe_named(self.recipe)
        except ValueError as error:
            problems["recipe"] = str(error)
        reward_config = config_problems(lambda: config_from_dict(RewardTrainingConfig, self.reward_config),
                                        REWARD_CONFIG, problems)
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("method", "method_config", "reward_config", "recipe"):
                continue
            if why := loop_setting_refusal(field, value):
                problems[field.name] = why
        if problems:
            raise SettingsRefused(problems)
        return RunSettings(**{**self.__dict__, "method_config": method_config, "reward_config": reward_config})


def loop_setting_refusal(field, value) -> str | None:
    """Why one of RunSettings' own values is unusable, or None. Whole numbers only for
    the numbers (a form or a JSON body may send 2.5 or true)."""
    if field.type == "bool":
        return None if isinstance(value, bool) else f"{field.name} must be true or false"
    if field.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{field.name} must be a whole number, not {value!r}"
        return bounds_of(field).refusal(field.name, value)
    if not isinstance(value, str):
        return f"{field.name} must be a string, not {value!r}"
    check = field.metadata.get("check")
    return check(value) if check else None


def config_problems(build: Callable[[], object], prefix: str, problems: dict[str, str]) -> dict:
    """The built config as a dict; or {} with its errors added to `problems`, each
    under `prefix.field`."""
    try:
        return config_to_dict(build())
    except ConfigErrors as errors:
        for error in errors.errors:
            problems[f"{prefix}.{error.field}" if error.field else prefix] = error.reason
    except ConfigError as error:
        problems[f"{prefix}.{error.field}" if error.field else prefix] = error.reason
    return {}


def check_settings_change(new: RunSettings) -> RunSettings:
    """`new.checked()`, plus the rules about how a run's settings fit together that a
    person changing them should hear of (a run created by an experiment or a branch
    keeps what its design or its parent chose). Refused rather than adjusted: a setting
    someone typed is never changed behind their back."""
    checked = new.checked()
    method, recipe = method_named(checked.method), recipe_named(checked.recipe)
    if (REWARD_MODEL not in method.needs and REWARD_MODEL_STAGE in recipe.stages
            and checked.query_selection != Run.QuerySelection.DISAGREEMENT):
        raise SettingsRefused({"recipe": (
            f"the {recipe.name} recipe trains a reward model every round, and nothing in this run reads it: "
            f"{method.name} learns from the labeled pairs and the queue is in random order. "
            f"Choose the direct recipe, or ensemble-disagreement query selection (which orders the queue by the "
            f"reward model)")})
    return checked


def settings_of(run: Run) -> RunSettings:
    return RunSettings(run.method, run.method_config, run.reward_config, run.recipe, run.query_selection,
                       run.update_prompts, run.comparison_prompts, run.auto_loop, run.loop_min_labels,
                       run.reward_auto_train_labels, run.precision, run.gradient_checkpointing,
                       run.sampling_engine, run.frozen_quantization)


def settings_with(current: RunSettings, changes: dict) -> RunSettings:
    """`current` with `changes` (a partial RunSettings as plain values, e.g. an API
    body): the configs' given fields over the current ones, or over the new method's
    defaults when the method changes (the old method's fields mean nothing to it).
    Unchecked: pass it to update_run_settings."""
    values = {**current.__dict__, **{k: v for k, v in changes.items() if k not in ("method_config", "reward_config")}}
    if values["method"] != current.method:
        try:
            base = method_defaults(values["method"])
        except ValueError:  # an unknown method: checked() names the methods
            base = {}
    else:
        base = current.method_config
    values["method_config"] = {**base, **(changes.get("method_config") or {})}
    values["reward_config"] = {**current.reward_config, **(changes.get("reward_config") or {})}
    return RunSettings(**values)


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
    """Save checked settings (check_settings_change), or SettingsRefused with nothing
    saved. Queued jobs keep the config they pinned."""
    checked = check_settings_change(new)
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

