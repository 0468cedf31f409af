"""Runs and the numbered, immutable versions they produce: policy versions, reward-model
versions, and the imported datasets a run trains on."""

from __future__ import annotations

import math

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from labeling.models import LabeledBy
from training.recipes import needs_reward_model

BAKEOFF_SOURCE = "bakeoff"
"""labeling's Comparison.Source.BAKEOFF, named here so this module need not import the
labeling app's models."""


def json_safe(value):
    """`value` with NaN and infinities as None: a trainer logs NaN now and then (a loss
    over an empty batch, a std of one sample), and neither SQLite's JSON nor PostgreSQL's
    jsonb accepts it, so one such step would fail the whole job."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


class Run(models.Model):
    """One lineage of policy versions and reward models with its own settings and head.
    A run starts from a base model (its root version, with no adapter) or branches from
    any version of another run; its rounds walk its recipe, and its policy updates use its
    method. Settings edited here never change a job already queued: jobs pin them."""

    class Precision(models.TextChoices):
        """training/ml/precision.py PRECISIONS."""

        AUTO = "auto", "auto (bf16 on a recent GPU, fp16 on an older one, fp32 on the CPU)"
        BF16 = "bf16", "bf16"
        FP16 = "fp16", "fp16 (CUDA only)"
        FP32 = "fp32", "fp32"

    class GradientCheckpointing(models.TextChoices):
        """training/ml/methods/base.py GRADIENT_CHECKPOINTING."""

        AUTO = "auto", "auto (on on a GPU, off on the CPU)"
        ON = "on", "on"
        OFF = "off", "off"

    class SamplingEngine(models.TextChoices):
        """training/ml/engines.py ENGINES."""

        TRANSFORMERS = "transformers", "transformers (model.generate)"
        VLLM = "vllm", "vLLM (CUDA; with the LoRA adapter, and GRPO/RLOO/online DPO in TRL's colocate mode)"

    class FrozenQuantization(models.TextChoices):
        """training/ml/quantization.py FROZEN_QUANTIZATIONS."""

        NONE = "none", "none (frozen weights in the run's precision)"
        NF4 = "nf4", "4-bit NF4 (CUDA, bitsandbytes): the reward model and the base under the adapter (QLoRA)"

    class QuerySelection(models.TextChoices):
        DISAGREEMENT = "disagreement", "Ensemble disagreement"
        RANDOM = "random", "Random"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    base_model_dir = models.CharField(max_length=1000, help_text="Hugging Face model directory of the base policy.")
    base_version = models.ForeignKey("PolicyVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+", help_text="The initial policy: the base model itself.")
    head = models.ForeignKey("PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                             help_text="The version rounds start from.")
    parent_run = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="branches")
    branched_from = models.ForeignKey("PolicyVersion", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="branches")
    inherited_label_id = models.BigIntegerField(
        default=0, help_text="A branch also learns from its parent run's labels up to this id."
    )
    inherited_reward_model = models.ForeignKey(
        "RewardModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="A branch's reward model until it trains its own.",
    )
    method = models.CharField(max_length=32, help_text="Policy-update method (training/ml/methods).")
    method_config = models.JSONField(default=dict, blank=True)
    reward_config = models.JSONField(default=dict, blank=True)
    sampling = models.JSONField(
        default=dict, blank=True,
        help_text="This run's own sampling settings, over the deployment's (PREFLOOP_MAX_NEW_TOKENS, "
                  "PREFLOOP_TEMPERATURE, PREFLOOP_EVAL_KL_SAMPLES): max_new_tokens, temperature, kl_samples. Every "
                  "job pins them when it is created, in whichever process creates it (an experiment sets them).")
    recipe = models.CharField(max_length=32, default="rlhf")
    precision = models.CharField(
        max_length=8, choices=Precision.choices, default=Precision.AUTO,
        help_text="Precision of every model its jobs load and train (training/ml/precision.py): auto is bf16 on "
                  "a CUDA device that supports it, fp16 on older CUDA, fp32 on the CPU, decided on the worker.")
    gradient_checkpointing = models.CharField(
        max_length=8, choices=GradientCheckpointing.choices, default=GradientCheckpointing.AUTO,
        help_text="In policy updates: recompute activations in the backward pass instead of keeping them "
                  "(training/ml/methods/base.py); auto is on on CUDA, off on the CPU.")
    sampling_engine = models.CharField(
        max_length=16, choices=SamplingEngine.choices, default=SamplingEngine.TRANSFORMERS,
        help_text="What samples its answers (training/ml/engines.py): comparisons, evaluation, best-of-N, and "
                  "with vllm GRPO's, RLOO's and online DPO's rollouts; PPO's rollouts stay on transformers.")
    frozen_quantization = models.CharField(
        max_length=8, choices=FrozenQuantization.choices, default=FrozenQuantization.NONE,
        help_text="4-bit loading of its jobs' frozen weights (training/ml/quantization.py): the reward model, "
                  "and the base under the trained adapter, which is also the KL reference.")
    query_selection = models.CharField(max_length=16, choices=QuerySelection.choices,
                                       default=QuerySelection.DISAGREEMENT)
    update_prompts = models.PositiveIntegerField(default=64, help_text="Prompts sampled for one policy update.")
    comparison_prompts = models.PositiveIntegerField(default=16, help_text="Prompts that get comparisons per round.")
    auto_loop = models.BooleanField(default=False, help_text="Start a round by itself after enough new labels.")
    loop_min_labels = models.PositiveIntegerField(default=32)
    reward_auto_train_labels = models.PositiveIntegerField(
        default=32, help_text="Train a reward model by itself after this many new labels; 0 = only by hand."
    )
    paused = models.BooleanField(default=False)
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(max_length=500, blank=True)
    labeled_by = models.CharField(
        max_length=16, choices=LabeledBy.choices, default=LabeledBy.PEOPLE,
        help_text="Who labels its comparisons; the labeling queue serves people only runs that people label.")
    guidelines = models.TextField(
        blank=True, help_text="Labeling guidelines (Markdown, rendered like model output) shown with its comparisons.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"run {self.name}"

    def job_setup(self) -> dict[str, str]:
        """How a job of this run loads and samples, as every job pins it when created."""
        return {"precision": self.precision, "sampling_engine": self.sampling_engine,
                "frozen_quantization": self.frozen_quantization}

    def pause(self, by, reason: str = "") -> None:
        """The stop button: its running round waits before its next stage, a bake-off
        before its evaluation, and nothing starts by itself until `resume`."""
        self.paused, self.paused_by, self.paused_at, self.pause_reason = True, by, timezone.now(), reason[:500]
        self.save(update_fields=["paused", "paused_by", "paused_at", "pause_reason"])

    def resume(self) -> None:
        self.paused, self.paused_by, self.paused_at, self.pause_reason = False, None, None, ""
        self.save(update_fields=["paused", "paused_by", "paused_at", "pause_reason"])

    @property
    def needs_reward_model(self) -> bool:
        """Whether its rounds train a reward model or its method reads one: automatic
        reward-model training runs only for such a run (training/recipes.py)."""
        return needs_reward_model(self.method, self.recipe)

    def lineage(self) -> list[tuple[Run, int | None]]:
        """This run and its ancestors, each with the largest label id it contributes
        (None: all of them). A branch learns from its parent's labels up to the moment it
        branched, and from the parent's ancestors no later than that either."""
        scope, run, bound = [(self, None)], self, None
        while run.parent_run_id is not None:
            bound = run.inherited_label_id if bound is None else min(bound, run.inherited_label_id)
            run = run.parent_run
            scope.append((run, bound))
        return scope

    def label_scope(self) -> Q:
        """A filter on labels: those this run's reward models and methods learn from.
        Labels on bake-off comparisons are not among them: those compare answers to the
        run's held-out evaluation prompts, and a judge that trained on them would no
        longer be judging unseen prompts (see training/services/bakeoffs.py)."""
        scope = Q(pk__in=[])
        for run, bound in self.lineage():
            part = Q(comparison__run=run)
            scope |= part if bound is None else part & Q(pk__lte=bound)
        return scope & ~Q(comparison__source=BAKEOFF_SOURCE)


OUTSIDE_METHOD = "outside"
"""PolicyVersion.method of a version an outside trainer uploaded through the API
(training/services/outside_policies.py): not one of PrefLoop's methods, which train
inside the loop (training/ml/methods)."""


class PolicyVersion(models.Model):
    """A numbered, immutable policy. A run's root version is its base model; later
    versions are LoRA adapters trained on top of it by a method, or uploaded by an
    outside trainer (an adapter, or a whole merged model in `base_model_dir`). Numbers
    are unique across runs, so "v7" names one policy everywhere."""

    number = models.PositiveIntegerField(unique=True)
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="versions")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    method = models.CharField(max_length=32, blank=True, help_text="How it was trained; empty for a base.")
    base_model_dir = models.CharField(max_length=1000, help_text="Hugging Face model directory of the base policy.")
    adapter_dir = models.CharField(max_length=1000, blank=True, help_text="LoRA adapter on the base; empty for a base.")
    config = models.JSONField(default=dict, blank=True, help_text="The method's config, as the job pinned it.")
    inputs = models.JSONField(default=dict, blank=True,
                              help_text="What it was trained on: start, reward model, prompts, labels, seed.")
    metrics = models.JSONField(default=dict, blank=True)
    kl_to_base = models.FloatField(
        null=True, blank=True,
        help_text="KL(this version ‖ its base) in nats per answer, sampled on the run's evaluation prompts by an "
                  "evaluation job (training/services/evaluation.py); 0 for a base, empty until measured.")
    kl_to_base_stderr = models.FloatField(null=True, blank=True)
    job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"policy v{self.number}"

    @property
    def is_base(self) -> bool:
        # An outside trainer's merged model has no adapter either, but is a model of its own.
        return not self.adapter_dir and self.method != OUTSIDE_METHOD


class RewardModelVersion(models.Model):
    """A numbered, immutable reward model: weights on disk (a LoRA adapter on the base
    backbone, or a whole fine-tuned model), what it was trained on and how well it does
    on held-out comparisons."""

    number = models.PositiveIntegerField(unique=True)
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="reward_models")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    base_model_dir = models.CharField(max_length=1000)
    weights_dir = models.CharField(max_length=1000, help_text="Adapter (or full model) and ensemble heads.")
    label_count = models.PositiveIntegerField(help_text="Labels with a preference it was trained and tested on.")
    last_label_id = models.BigIntegerField(default=0, help_text="Labels with a larger id are newer than this version.")
    train_pairs = models.PositiveIntegerField(default=0)
    heldout_pairs = models.PositiveIntegerField(default=0)
    heldout_accuracy = models.FloatField(
        null=True, blank=True, help_text="On held-out pairs from labels (imported ones when no label is held out).")
    heldout_accuracy_imported = models.FloatField(null=True, blank=True,
                                                  help_text="On held-out pairs from imported datasets.")
    heldout_accuracy_trained_head = models.FloatField(
        null=True, blank=True, help_text="A full retrain's held-out accuracy with the head TRL trained, before the "
                                         "head fitted on its features replaced it (empty where none was fitted).")
    reward_mean = models.FloatField(default=0.0, help_text="Raw reward mean on initial-policy completions.")
    reward_std = models.FloatField(default=1.0, help_text="Raw reward std on initial-policy completions.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=list, blank=True, help_text="Per-step training metrics.")
    datasets = models.JSONField(default=list, blank=True,
                                help_text="Imported datasets it also trained on: id, name, weight, pairs.")

    class Update(models.TextChoices):
        FULL = "full", "Full retrain"
        REFIT = "refit", "Head refit"

    update = models.CharField(max_length=16, choices=Update.choices, default=Update.FULL,
                              help_text="How it was made: the adapter and head trained on every pair, or only the "
                                        "head refit on the backbone's cached features (training/ml/reward_refit.py).")
    backbone = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="refits",
                                 help_text="A refit's full version, whose adapter it uses.")
    has_features = models.BooleanField(
        default=False, help_text="A full version that kept its answers' features, so refits can start from it.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"reward model v{self.number}"

    @property
    def backbone_version(self) -> RewardModelVersion:
        """The full version whose adapter this one uses (itself for a full version)."""
        return self.backbone if self.update == self.Update.REFIT else self




class RunDataset(models.Model):
    """An imported preference dataset a run trains on, besides its own labels: its
    reward model (preference-model pre-training, Askell et al. 2021 / Bai et al. 2022,
    before the first human label), its pair-learning methods (DPO, SFT on chosen), or
    both. The weight scales how many of the dataset's pairs a training uses (0.25: a
    random quarter; 2: each pair twice), so a team can turn an outside dataset down as
    its own labels grow, and drop it by removing the row. Jobs pin the choice."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="datasets")
    dataset = models.ForeignKey("labeling.PreferenceDataset", on_delete=models.PROTECT, related_name="runs")
    weight = models.FloatField(default=1.0)
    for_reward_model = models.BooleanField(default=True)
    for_methods = models.BooleanField(default=True, help_text="DPO, SFT on chosen and other pair-learning methods.")
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["run", "dataset"], name="dataset_once_per_run")]

    def __str__(self) -> str:
        return f"{self.dataset} in {self.run} (weight {self.weight:g})"
