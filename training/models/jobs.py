"""A job: one unit of background work, and its state."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from training.models.rounds import Round
from training.models.runs import Run, json_safe


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
    def precision(self) -> str:
        """The run's precision setting as the job pinned it; a job created before jobs
        pinned one runs in "auto"."""
        return self.params.get("precision", Run.Precision.AUTO)

    @property
    def sampling_engine(self) -> str:
        """The run's sampling engine as the job pinned it (older jobs: transformers)."""
        return self.params.get("sampling_engine", Run.SamplingEngine.TRANSFORMERS)

    @property
    def frozen_quantization(self) -> str:
        """The run's frozen_quantization as the job pinned it (older jobs: none)."""
        return self.params.get("frozen_quantization", Run.FrozenQuantization.NONE)

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
