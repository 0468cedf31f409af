from __future__ import annotations

import math

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from labeling.models import LabeledBy
from training.recipes import DONE, RECIPES, STAGE_TITLES

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


class PolicyVersion(models.Model):
    """A numbered, immutable policy. A run's root version is its base model; later
    versions are LoRA adapters trained on top of it by a method. Numbers are unique
    across runs, so "v7" names one policy everywhere."""

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
        return not self.adapter_dir


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


class Round(models.Model):
    """One pass through a run's recipe (e.g. reward model → policy update → comparisons
    → evaluation), one job per stage, with its own page. The stage list is copied from
    the recipe when the round starts."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    number = models.PositiveIntegerField(unique=True)
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="rounds")
    recipe = models.CharField(max_length=32)
    stages = models.JSONField(default=list, help_text="Stage names, in order (training/recipes.py).")
    stage = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=100, default="manual")
    policy_before = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="rounds_started")
    policy_after = models.ForeignKey(PolicyVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="rounds_produced")
    reward_model = models.ForeignKey(RewardModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="rounds")
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"round {self.number}"

    @property
    def stage_title(self) -> str:
        return STAGE_TITLES.get(self.stage, self.stage)

    @property
    def recipe_title(self) -> str:
        return RECIPES[self.recipe].title if self.recipe in RECIPES else self.recipe

    def stage_after(self, stage: str) -> str:
        """The stage that follows `stage` in this round's list ("done" after the last)."""
        index = self.stages.index(stage)
        return self.stages[index + 1] if index + 1 < len(self.stages) else DONE


class JobCancelled(Exception):
    """Raised in a running job at its next progress step (or as it is about to publish)
    once a researcher cancelled it (services.jobs.cancel_job). The job's own error
    handling then publishes nothing, as for any failure, and mark_failed records the job
    as cancelled."""


class Job(models.Model):
    """One unit of background work (generation, training). Pages read these rows; the
    Celery result backend is never consulted."""

    class Kind(models.TextChoices):
        GENERATE = "generate", "Generate comparisons"
        TRAIN_REWARD = "train_reward", "Train reward model"
        REFIT_REWARD = "refit_reward", "Refit reward-model head"
        POLICY_UPDATE = "policy_update", "Update the policy"
        EVALUATE = "evaluate", "Evaluate policies"
        IMPORT_DATASET = "import_dataset", "Import a preference dataset"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs",
                            help_text="Empty for work that belongs to no run (importing a dataset).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    params = models.JSONField(default=dict, blank=True, help_text="Everything the job needs, pinned at creation.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=list, blank=True, help_text="Per-step metrics, newest last.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Starts, counting restarts after a crash.")
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When its message was last sent to the broker.")
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the process running it.")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life from that process; the job sweep acts on silence.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    cancel_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="A researcher cancelled it while it ran: it stops at its next step.")
    cancelled_by = models.CharField(max_length=150, blank=True, help_text="Who cancelled it (a username).")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Triggers for reward-model training coalesce into the one pending job, so
            # two clicks (or a click and the automatic trigger) never train twice.
            models.UniqueConstraint(
                fields=["run"],
                condition=Q(kind="train_reward", status="pending"),
                name="one_pending_reward_training_per_run",
            ),
            models.UniqueConstraint(
                fields=["run"],
                condition=Q(kind="refit_reward", status="pending"),
                name="one_pending_reward_refit_per_run",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def progress(self) -> float:
        """Share of the work done, 0 to 1."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left if the remaining steps go as fast as the done ones."""
        if self.status != self.Status.RUNNING or not self.step or not self.started_at or not self.total_steps:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return max(elapsed * (self.total_steps - self.step) / self.step, 0.0)

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def mark_running(self, worker: str = "") -> bool:
        """Pending to running; running again counts as a restart after a worker died.
        A compare-and-swap on (status, attempts): of two deliveries of one message that
        race, exactly one starts the job; the other gets False."""
        if self.status not in (self.Status.PENDING, self.Status.RUNNING):
            raise ValueError(f"job {self.pk} is {self.status}; it cannot run")
        now = timezone.now()
        changes = {"status": self.Status.RUNNING, "started_at": now, "attempts": self.attempts + 1, "step": 0,
                   "worker": worker, "heartbeat_at": now}
        won = Job.objects.filter(pk=self.pk, status=self.status, attempts=self.attempts).update(**changes)
        if won:
            for field, value in changes.items():
                setattr(self, field, value)
        return bool(won)

    def silent_seconds(self, now=None) -> float | None:
        """Seconds since a running job's worker last gave a sign of life (None when the
        job is not running)."""
        if self.status != self.Status.RUNNING:
            return None
        last = self.heartbeat_at or self.started_at or self.created_at
        return max(((now or timezone.now()) - last).total_seconds(), 0.0)

    @property
    def status_text(self) -> str:
        """The status as a person should read it: a running job whose worker has gone
        quiet says so (the job sweep sends it again or fails it; see job_recovery)."""
        silent = self.silent_seconds()
        if silent is not None and silent > 3 * settings.PREFLOOP_HEARTBEAT_SECONDS:
            return f"running? no word from its worker for {silent:.0f} s"
        if self.status == self.Status.RUNNING and self.cancel_requested_at:
            return f"stopping: cancelled by {self.cancelled_by or 'someone'}"
        return self.status

    @property
    def can_be_cancelled(self) -> bool:
        return self.status == self.Status.PENDING or (self.status == self.Status.RUNNING
                                                      and not self.cancel_requested_at)

    def report_progress(self, step: int, total_steps: int, metrics: dict | None = None) -> None:
        """Record a step; raises JobCancelled instead once the job was cancelled (one
        conditional UPDATE: asking costs no extra query)."""
        changes = {"step": step, "total_steps": total_steps}
        if metrics:
            changes["metrics"] = [*self.metrics, json_safe(metrics)]
        if not Job.objects.filter(pk=self.pk, cancel_requested_at=None).update(**changes):
            raise JobCancelled(f"job {self.pk} was cancelled by {self.cancel_requester()}")
        for field, value in changes.items():
            setattr(self, field, value)

    def cancel_requester(self) -> str | None:
        """Who cancelled this job while it ran, read from the database (the running
        process's copy does not know); None when nobody did."""
        requested = Job.objects.filter(pk=self.pk).values_list("cancel_requested_at", "cancelled_by").first()
        if not requested or requested[0] is None:
            return None
        return requested[1] or "someone"

    def raise_if_cancelled(self) -> None:
        """In the transaction that publishes what the job made: lock the job's row, then
        raise JobCancelled if it was cancelled. Locking the row first, not a SELECT FOR
        UPDATE filtered on the cancel (which locks nothing when nobody cancelled), puts a
        cancel either before this check or after the caller's commit."""
        requested, by = (Job.objects.select_for_update().filter(pk=self.pk)
                         .values_list("cancel_requested_at", "cancelled_by").get())
        if requested is not None:
            raise JobCancelled(f"job {self.pk} was cancelled by {by or 'someone'} before it published")

    def mark_succeeded(self, result: dict) -> None:
        self.status = self.Status.SUCCEEDED
        self.result = json_safe(result)
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "result", "finished_at"])
        # Read after the status is written: a cancel from now on finds it finished.
        if (requester := self.cancel_requester()) is not None:  # after its last check: it had published
            note = f"cancelled by {requester} too late: it had finished"
            self.error = f"{self.error}; {note}" if self.error else note
            self.save(update_fields=["error"])

    def mark_failed(self, error: str) -> None:
        """A job cancelled while it ran ends here too (its runner caught JobCancelled, or
        failed before its next step): it is recorded as cancelled."""
        if self.status == self.Status.RUNNING and (requester := self.cancel_requester()) is not None:
            stopped = f"cancelled by {requester}; stopped at step {self.step} of {self.total_steps}"
            self.mark_cancelled(stopped if JobCancelled.__name__ in error else f"{stopped} (it had failed: {error})")
            return
        self.status = self.Status.FAILED
        self.error = error
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])

    def mark_cancelled(self, reason: str) -> None:
        """Finished without a result, not by a fault: `reason` says why."""
        self.status = self.Status.CANCELLED
        self.error = reason
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])


class EvaluationPrompt(models.Model):
    """One prompt of a run's fixed evaluation set: every policy version of the run
    answers these same prompts once, so versions can be read side by side and scored by
    the reward model. Chosen at the run's first generation (see services.evaluation),
    held out of its comparisons and policy updates."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="evaluation_prompts")
    prompt = models.ForeignKey("labeling.Prompt", on_delete=models.CASCADE, related_name="evaluations")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "prompt"], name="evaluation_prompt_once_per_run"),
            models.UniqueConstraint(fields=["run", "position"], name="evaluation_position_once_per_run"),
        ]

    def __str__(self) -> str:
        return f"evaluation prompt {self.position}"


class EvaluationSample(models.Model):
    """A policy version's answer to an evaluation prompt."""

    policy_version = models.ForeignKey(PolicyVersion, on_delete=models.CASCADE, related_name="evaluation_samples")
    prompt = models.ForeignKey("labeling.Prompt", on_delete=models.CASCADE, related_name="+")
    completion = models.OneToOneField("labeling.Completion", on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy_version", "prompt"], name="one_evaluation_sample_per_prompt"),
        ]

    def __str__(self) -> str:
        return f"{self.policy_version} on evaluation prompt {self.prompt_id}"


class RewardScore(models.Model):
    """A reward model's normalized score of one completion (mean 0, std 1 on the initial
    policy's samples), so its win rates can be read without loading the model."""

    reward_model = models.ForeignKey(RewardModelVersion, on_delete=models.CASCADE, related_name="scores")
    completion = models.ForeignKey("labeling.Completion", on_delete=models.CASCADE, related_name="reward_scores")
    score = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["reward_model", "completion"], name="one_score_per_reward_model"),
        ]


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


class BakeOff(models.Model):
    """Several methods trained from one start version on the same labels and the same
    reward model (all pinned here, identically for every candidate), then judged blind
    by people on the run's evaluation prompts. The researcher promotes one candidate to
    be the run's head; the others stay as branches of the lineage.
    The state machine lives in training/services/bakeoffs.py."""

    class Status(models.TextChoices):
        TRAINING = "training", "Training the candidates"
        EVALUATING = "evaluating", "Answering the evaluation prompts"
        JUDGING = "judging", "Comparisons in the labeling queue"
        FAILED = "failed", "Failed"

    class Dispatch(models.TextChoices):
        QUEUE = "queue", "Celery workers"
        INLINE = "inline", "The process that started it"

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="bakeoffs")
    start = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="bakeoffs_started",
                              help_text="The version every candidate trains from (the run's head when it started).")
    reward_model = models.ForeignKey(RewardModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="bakeoffs",
                                     help_text="Pinned for every candidate, and the judge of the evaluation answers.")
    label_bound = models.BigIntegerField(help_text="Every candidate learns from labels up to this id.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    dispatch = models.CharField(max_length=16, choices=Dispatch.choices, default=Dispatch.QUEUE,
                                help_text="Who runs its jobs: the workers, or a command waiting in its own process.")
    evaluation_job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    comparisons = models.ManyToManyField("labeling.Comparison", blank=True, related_name="bakeoffs")
    promoted = models.ForeignKey("BakeOffCandidate", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", help_text="The candidate last promoted to the run's head.")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True,
                                       help_text="When its comparisons were queued, or it failed.")

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"bake-off {self.pk}"

    @property
    def is_settled(self) -> bool:
        """Judging or failed: no job of it is left to run."""
        return self.status in (self.Status.JUDGING, self.Status.FAILED)


class BakeOffCandidate(models.Model):
    """One method of a bake-off: its pinned config, the job that trains it, and the
    sibling version that job publishes."""

    bakeoff = models.ForeignKey(BakeOff, on_delete=models.CASCADE, related_name="candidates")
    method = models.CharField(max_length=32)
    config = models.JSONField(default=dict, blank=True, help_text="The method's config, as its job pinned it.")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    version = models.ForeignKey(PolicyVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["bakeoff", "method"], name="method_once_per_bakeoff")]

    def __str__(self) -> str:
        return f"{self.method} in {self.bakeoff}"

    @property
    def compute_seconds(self) -> float | None:
        """Wall time of its job, started to finished (the last attempt's start)."""
        job = self.job
        if job is None or job.started_at is None or job.finished_at is None:
            return None
        return (job.finished_at - job.started_at).total_seconds()
