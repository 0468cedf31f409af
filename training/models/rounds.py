"""A round: one pass through a run's recipe."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from training.models.runs import PolicyVersion, RewardModelVersion, Run
from training.recipes import DONE, RECIPES, STAGE_TITLES


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

    @property
    def waits_before_next_stage(self) -> bool:
        """Running, with no unfinished job: it stopped before its next stage (a pause)."""
        unfinished = self.jobs.exclude(status__in=self.jobs.model.FINISHED)  # Job, which builds on Round
        return self.status == self.Status.RUNNING and not unfinished.exists()

    def advance(self) -> None:
        """Past the current stage: on to the next, or succeeded after the last. Saves the
        whole row, with what the stage recorded on it."""
        self.stage = self.stage_after(self.stage)
        if self.stage == DONE:
            self.status, self.finished_at = self.Status.SUCCEEDED, timezone.now()
        self.save()

    def fail(self, error: str) -> None:
        self.status, self.error, self.finished_at = self.Status.FAILED, error, timezone.now()
        self.save(update_fields=["status", "error", "finished_at"])
