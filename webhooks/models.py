"""Webhooks: a staff member's receiver URL and the events it wants; the events that
happened (the outbox, written in the transaction of what happened); one delivery per
(event, hook), and every attempt at it (the delivery log)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from training.models import Run

# The longest wait between two attempts; the first wait is PREFLOOP_WEBHOOK_RETRY_SECONDS
# and each next one doubles.
MAX_RETRY_DELAY_SECONDS = 600


class EventType(models.TextChoices):
    REWARD_MODEL_PUBLISHED = "reward_model.published", "A reward model version was published"
    POLICY_VERSION_PUBLISHED = "policy_version.published", "A policy version was published"
    ROUND_FINISHED = "round.finished", "A round finished"
    ROUND_FAILED = "round.failed", "A round failed"
    JOB_FAILED = "job.failed", "A job failed"
    LABELS_COUNTED = "labels.counted", "Every N labels on a run"
    TEST = "webhook.test", "A test event (the Test button)"


SUBSCRIBABLE = [choice for choice in EventType if choice != EventType.TEST]


class Webhook(models.Model):
    """A receiver. The secret signs every body (webhooks/signing.py); it is shown once,
    when the hook is made, and kept here in the clear because signing needs it (a hash
    could not sign): whoever reads this table can forge this hook's signatures, as
    whoever reads settings can forge sessions."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, help_text="Event types (EventType values) it receives.")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="webhooks",
                            help_text="Only this run's events; empty: every run's.")
    every_labels = models.PositiveIntegerField(
        default=0, help_text="labels.counted fires each time the run's label count passes a multiple of this.")
    secret = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return f"webhook {self.name}"

    def wants(self, event_type: str, run_id: int | None) -> bool:
        if event_type == EventType.TEST:
            return True
        return event_type in self.events and (self.run_id is None or self.run_id == run_id)

    @property
    def event_titles(self) -> list[str]:
        return [EventType(e).label if e in EventType.values else e for e in self.events]


class WebhookEvent(models.Model):
    """Something that happened, written with it. `key` names the happening (e.g.
    `round.failed:12`) so that a path that runs twice (a redelivered job announced again)
    records it once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=40, choices=EventType.choices)
    key = models.CharField(max_length=200, unique=True)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    def payload(self) -> dict:
        return {"id": str(self.id), "type": self.type, "created_at": self.created_at.isoformat(),
                "data": self.data}


class WebhookDelivery(models.Model):
    """One event to one hook: pending until a 2xx answer (delivered, never sent again) or
    until it ran out of attempts (failed)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A task is sending it; another may take it only after this.")
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["event", "webhook"], name="one_delivery_per_event_and_hook")]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook} ({self.status})"

    def record_failure(self, now, status_code: int | None, error: str) -> None:
        """One more failed attempt: the next one after a doubling wait, or failed for good."""
        self.attempts += 1
        self.last_status_code, self.last_error, self.claimed_until = status_code, error, None
        if self.attempts >= settings.PREFLOOP_WEBHOOK_MAX_ATTEMPTS:
            self.status = self.Status.FAILED
        else:
            self.next_attempt_at = now + timedelta(seconds=retry_delay(self.attempts))
        self.save()

    def record_success(self, now, status_code: int) -> None:
        self.attempts += 1
        self.status, self.delivered_at, self.claimed_until = self.Status.DELIVERED, now, None
        self.last_status_code, self.last_error = status_code, ""
        self.save()


def retry_delay(failed_attempts: int) -> float:
    """Seconds to wait after the n-th failed attempt: the setting, doubled each time, capped."""
    return min(settings.PREFLOOP_WEBHOOK_RETRY_SECONDS * 2 ** (failed_attempts - 1), MAX_RETRY_DELAY_SECONDS)


class DeliveryAttempt(models.Model):
    """One POST of a delivery, as the hook's page lists it."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    milliseconds = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-at", "-pk"]
