"""Bake-offs: several methods trained from one start, judged blind by people."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from training.models.jobs import Job
from training.models.runs import PolicyVersion, RewardModelVersion, Run


class BakeOff(models.Model):
    """Several methods trained from one start version on the same labels and the same
    reward model (all pinned here, identically for every candidate), then judged blind
    by people on the run's evaluation prompts. The researcher promotes one candidate to
    be the run's head; the others stay as branches of the lineage.
    Its steps are taken by training/services/bakeoffs.py; the transitions are below."""

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

    def start_evaluating(self, job: Job) -> None:
        """Every candidate is done: `job` answers the evaluation prompts."""
        self.status, self.evaluation_job = self.Status.EVALUATING, job
        self.save(update_fields=["status", "evaluation_job"])

    def start_judging(self) -> None:
        """Its comparisons are queued: people judge from here on."""
        self.status, self.finished_at = self.Status.JUDGING, timezone.now()
        self.save(update_fields=["status", "finished_at"])

    def fail(self, error: str) -> None:
        self.status, self.error, self.finished_at = self.Status.FAILED, error, timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])


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
