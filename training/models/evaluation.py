"""A run's fixed evaluation set, its versions' answers, and reward-model scores."""

from __future__ import annotations

from django.db import models

from training.models.runs import PolicyVersion, RewardModelVersion, Run


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
