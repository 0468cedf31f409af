from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class PolicyVersion(models.Model):
    """A numbered, immutable policy. Version 0 is the base model itself; later versions
    are adapters trained on top of it."""

    number = models.PositiveIntegerField(unique=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    base_model_dir = models.CharField(max_length=1000, help_text="Hugging Face model directory of the base policy.")
    adapter_dir = models.CharField(max_length=1000, blank=True, help_text="LoRA adapter on the base; empty for v0.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"policy v{self.number}"


class RewardModelVersion(models.Model):
    """A numbered, immutable reward model: weights on disk (a LoRA adapter on the base
    backbone, or a whole fine-tuned model), what it was trained on and how well it does
    on held-out comparisons."""

    number = models.PositiveIntegerField(unique=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    base_model_dir = models.CharField(max_length=1000)
    weights_dir = models.CharField(max_length=1000, help_text="Adapter (or full model) and ensemble heads.")
    label_count = models.PositiveIntegerField(help_text="Labels with a preference it was trained and tested on.")
    last_label_id = models.BigIntegerField(default=0, help_text="Labels with a larger id are newer than this version.")
    train_pairs = models.PositiveIntegerField(default=0)
    heldout_pairs = models.PositiveIntegerField(default=0)
    heldout_accuracy = models.FloatField(null=True, blank=True)
    reward_mean = models.FloatField(default=0.0, help_text="Raw reward mean on initial-policy completions.")
    reward_std = models.FloatField(default=1.0, help_text="Raw reward std on initial-policy completions.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=list, blank=True, help_text="Per-step training metrics.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"reward model v{self.number}"


class LoopState(models.Model):
    """The one row that says whether automatic rounds may go on. Any signed-in person can
    stop the loop (InstructGPT's labelers once caught a sign-flip bug that way); only
    staff resume it."""

    paused = models.BooleanField(default=False)
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    paused_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return f"loop paused by {self.paused_by}" if self.paused else "loop running"

    @classmethod
    def current(cls) -> LoopState:
        return cls.objects.get_or_create(pk=1)[0]


class Round(models.Model):
    """One turn of the loop: (reward model →) PPO → new comparisons, with its own page."""

    class Kind(models.TextChoices):
        PPO = "ppo", "PPO round"
        FULL = "full", "Full round"

    class Stage(models.TextChoices):
        REWARD_MODEL = "reward_model", "Training the reward model"
        PPO = "ppo", "PPO"
        COMPARISONS = "comparisons", "Generating comparisons"
        EVALUATION = "evaluation", "Evaluating on fixed prompts"
        DONE = "done", "Done"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    number = models.PositiveIntegerField(unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    stage = models.CharField(max_length=16, choices=Stage.choices)
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


class Job(models.Model):
    """One unit of background work (generation, training). Pages read these rows; the
    Celery result backend is never consulted."""

    class Kind(models.TextChoices):
        GENERATE = "generate", "Generate comparisons"
        TRAIN_REWARD = "train_reward", "Train reward model"
        PPO = "ppo", "PPO round"
        EVALUATE = "evaluate", "Evaluate policies"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    params = models.JSONField(default=dict, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=list, blank=True, help_text="Per-step metrics, newest last.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Starts, counting restarts after a crash.")
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
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
                fields=["kind"],
                condition=Q(kind="train_reward", status="pending"),
                name="one_pending_reward_training",
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

    def mark_running(self) -> None:
        """Pending to running; running again counts as a restart after a worker died."""
        if self.status not in (self.Status.PENDING, self.Status.RUNNING):
            raise ValueError(f"job {self.pk} is {self.status}; it cannot run")
        self.status = self.Status.RUNNING
        self.started_at = timezone.now()
        self.attempts += 1
        self.step = 0
        self.save(update_fields=["status", "started_at", "attempts", "step"])

    def report_progress(self, step: int, total_steps: int, metrics: dict | None = None) -> None:
        self.step, self.total_steps = step, total_steps
        fields = ["step", "total_steps"]
        if metrics:
            self.metrics = [*self.metrics, metrics]
            fields.append("metrics")
        self.save(update_fields=fields)

    def mark_succeeded(self, result: dict) -> None:
        self.status = self.Status.SUCCEEDED
        self.result = result
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "result", "finished_at"])

    def mark_failed(self, error: str) -> None:
        self.status = self.Status.FAILED
        self.error = error
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])


class EvaluationPrompt(models.Model):
    """One prompt of the fixed evaluation set: every policy version answers these same
    prompts once, so versions can be read side by side and scored by the reward model.
    Chosen at the first generation (see services.evaluation), held out of comparisons
    and PPO rollouts."""

    prompt = models.OneToOneField("labeling.Prompt", on_delete=models.CASCADE, related_name="evaluation")
    position = models.PositiveIntegerField(unique=True)

    class Meta:
        ordering = ["position"]

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
