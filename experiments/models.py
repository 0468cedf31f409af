from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Experiment(models.Model):
    """A design over arms, each arm run at several seeds as isolated runs whose labels
    come from a simulated annotator with a hidden gold reward (experiments/designs.py)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Mode(models.TextChoices):
        INLINE = "inline", "Inline, in one process"
        CELERY = "celery", "Through the Celery workers"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32)
    design = models.JSONField(help_text="The checked design (experiments.designs.design_to_dict).")
    design_text = models.TextField(blank=True, help_text="The design file as written.")
    mode = models.CharField(max_length=16, choices=Mode.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"experiment {self.pk} ({self.name})"

    def mark_running(self) -> None:
        if self.status != self.Status.PENDING:
            raise ValueError(f"{self} is {self.status}; only a pending experiment starts")
        self.status, self.started_at = self.Status.RUNNING, timezone.now()
        self.save(update_fields=["status", "started_at"])

    def mark_finished(self, error: str = "") -> None:
        self.status = self.Status.FAILED if error else self.Status.SUCCEEDED
        self.error, self.finished_at = error, timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])


class ArmRun(models.Model):
    """One arm of an experiment at one seed: its own run (labeled by the simulator only),
    so arms never share labels, comparisons or versions."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arm_runs")
    arm = models.CharField(max_length=100)
    schedule = models.CharField(max_length=16, help_text="online or offline (experiments/designs.py).")
    seed = models.IntegerField()
    run = models.OneToOneField("training.Run", on_delete=models.PROTECT, related_name="experiment_arm")

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["experiment", "arm", "seed"], name="arm_seed_once")]

    def __str__(self) -> str:
        return f"{self.arm} seed {self.seed}"


class RoundResult(models.Model):
    """What one arm at one seed measured after a round (0: the base policy): the gold
    reward of the policy on the run's held-out evaluation prompts, the proxy (its reward
    model's) reward, KL to the reference, labels used and compute time so far."""

    arm_run = models.ForeignKey(ArmRun, on_delete=models.CASCADE, related_name="results")
    round_index = models.PositiveIntegerField()
    policy_version = models.ForeignKey("training.PolicyVersion", on_delete=models.PROTECT, related_name="+")
    reward_model = models.ForeignKey("training.RewardModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    gold_reward = models.FloatField(help_text="Mean gold score of the version's evaluation answers.")
    proxy_reward = models.FloatField(null=True, blank=True,
                                     help_text="Mean normalized score of the same answers by the arm's reward model.")
    kl = models.FloatField(null=True, blank=True, help_text="KL(policy ‖ base) in nats per answer (sampled).")
    labels = models.PositiveIntegerField(help_text="Simulated labels the arm had spent by then.")
    compute_seconds = models.FloatField(help_text="Job time of the arm so far.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["arm_run", "round_index"]
        constraints = [models.UniqueConstraint(fields=["arm_run", "round_index"], name="one_result_per_round")]


class GoldScore(models.Model):
    """The gold judge's score of one evaluation answer. Kept here only: nothing the
    reward models, the methods or the labeling queue read looks at this table."""

    result = models.ForeignKey(RoundResult, on_delete=models.CASCADE, related_name="gold_scores")
    prompt = models.ForeignKey("labeling.Prompt", on_delete=models.CASCADE, related_name="+")
    completion = models.ForeignKey("labeling.Completion", on_delete=models.CASCADE, related_name="+")
    score = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["result", "prompt"], name="one_gold_score_per_prompt")]
