from __future__ import annotations

from django.conf import settings
from django.db import models
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


class Job(models.Model):
    """One unit of background work (generation, training). Pages read these rows; the
    Celery result backend is never consulted."""

    class Kind(models.TextChoices):
        GENERATE = "generate", "Generate comparisons"

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
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def progress(self) -> float:
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def mark_running(self) -> None:
        if self.status != self.Status.PENDING:
            raise ValueError(f"job {self.pk} is {self.status}, not pending")
        self.status = self.Status.RUNNING
        self.started_at = timezone.now()
        self.save(update_fields=["status", "started_at"])

    def report_progress(self, step: int, total_steps: int) -> None:
        self.step, self.total_steps = step, total_steps
        self.save(update_fields=["step", "total_steps"])

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
