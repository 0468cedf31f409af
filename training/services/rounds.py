"""The loop: rounds that train a reward model, run PPO, queue comparisons from the new
policy and evaluate it on the fixed prompts, one stage (one job) after another; the stop button; automatic rounds.

A round moves forward when the job of its stage finishes: `job_finished` is called by
every job runner. While the loop is paused, a running round waits before its next stage
and no automatic round starts; resuming picks up where it waited.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from labeling.models import Prompt
from training.models import Job, LoopState, PolicyVersion, RewardModelVersion, Round
from training.services.evaluation import create_evaluation_job
from training.services.generation import prompts_needing_samples
from training.services.jobs import enqueue_on_commit
from training.services.policies import create_ppo_job, latest_policy
from training.services.reward_models import (
    labels_since_latest_reward_model,
    latest_reward_model,
    maybe_request_reward_training,
    request_reward_training,
)

log = logging.getLogger(__name__)

STAGE_OF_JOB = {
    Job.Kind.TRAIN_REWARD: Round.Stage.REWARD_MODEL,
    Job.Kind.PPO: Round.Stage.PPO,
    Job.Kind.GENERATE: Round.Stage.COMPARISONS,
    Job.Kind.EVALUATE: Round.Stage.EVALUATION,
}
NEXT_STAGE = {
    Round.Stage.REWARD_MODEL: Round.Stage.PPO,
    Round.Stage.PPO: Round.Stage.COMPARISONS,
    Round.Stage.COMPARISONS: Round.Stage.EVALUATION,
    Round.Stage.EVALUATION: Round.Stage.DONE,
}


class RoundError(ValueError):
    """A round cannot start now; the message says why."""


def running_round() -> Round | None:
    return Round.objects.filter(status=Round.Status.RUNNING).order_by("-number").first()


def start_round(kind: str, requested_by: AbstractBaseUser | None = None, trigger: str = "manual") -> Round:
    """Start a round: "full" trains a reward model first, "ppo" uses the latest one.
    Staff may start one while the loop is stopped (stopping holds automatic rounds)."""
    with transaction.atomic():
        # The loop-state row is the lock: two starts at once (a click and an automatic
        # trigger) queue up here, so the second sees the first's round.
        LoopState.objects.select_for_update().get(pk=LoopState.current().pk)
        if Round.objects.filter(status=Round.Status.RUNNING).exists():
            raise RoundError(f"{running_round()} is still running; one round runs at a time")
        if kind == Round.Kind.PPO and latest_reward_model() is None:
            raise RoundError("there is no reward model yet: run a full round, or train one first")
        last = Round.objects.order_by("-number").first()
        round_ = Round.objects.create(
            number=last.number + 1 if last else 1, kind=kind,
            stage=Round.Stage.REWARD_MODEL if kind == Round.Kind.FULL else Round.Stage.PPO,
            policy_before=latest_policy(), requested_by=requested_by, trigger=trigger,
        )
        start_stage(round_)
    return round_


def start_stage(round_: Round) -> Job:
    """Create and queue the job for the round's current stage."""
    from training import tasks

    if round_.stage == Round.Stage.REWARD_MODEL:
        # A reward-model job already waiting (the button, the automatic trigger) becomes
        # this stage; single flight means there is never a second one.
        job = request_reward_training(reason=f"{round_}", round_=round_)
    elif round_.stage == Round.Stage.PPO:
        reward_model = round_.reward_model or latest_reward_model()
        job = create_ppo_job(round_, reward_model=reward_model)
        enqueue_on_commit(job, tasks.run_ppo)
    elif round_.stage == Round.Stage.COMPARISONS:
        job = comparisons_job(round_)
        enqueue_on_commit(job, tasks.generate_comparisons)
    elif round_.stage == Round.Stage.EVALUATION:
        job = create_evaluation_job(round_)
        enqueue_on_commit(job, tasks.evaluate_policies)
    else:
        raise ValueError(f"{round_} has no job for stage {round_.stage}")
    return job


def comparisons_job(round_: Round) -> Job:
    """New-vs-new comparisons (for the next reward model), and the new version against
    the previous one and against the base (human win rates on the progress pages; the
    Anthropic HH runs kept older snapshots in the pool for the same reason) on a sample
    of prompts."""
    new = round_.policy_after
    versus = sorted({round_.policy_before.number, 0})
    prompts = prompts_needing_samples(new, settings.PREFLOOP_ROUND_COMPARISON_PROMPTS, seed=round_.number)
    return Job.objects.create(
        kind=Job.Kind.GENERATE, round=round_, total_steps=(1 + len(versus)) * len(prompts),
        params={"policy_version": new.number, "versus": versus,
                "prompt_ids": [p.pk for p in prompts], "samples": 2,
                "selection": settings.PREFLOOP_QUERY_SELECTION},
    )


def job_finished(job: Job) -> None:
    """Move the job's round on: record what the stage produced, then start the next
    stage (or wait, if the loop is paused). A failed stage fails the round. Safe to call
    twice for the same job (a redelivered task does): only the current stage's job
    moves the round."""
    if job.round_id is None or not job.is_finished:
        return
    with transaction.atomic():
        loop = LoopState.objects.select_for_update().get(pk=LoopState.current().pk)
        round_ = Round.objects.select_for_update().get(pk=job.round_id)
        if round_.status != Round.Status.RUNNING or STAGE_OF_JOB[job.kind] != round_.stage:
            return
        if job.status != Job.Status.SUCCEEDED:
            round_.status, round_.error, round_.finished_at = Round.Status.FAILED, job.error, timezone.now()
            round_.save(update_fields=["status", "error", "finished_at"])
            return
        if round_.stage == Round.Stage.REWARD_MODEL:
            round_.reward_model = RewardModelVersion.objects.get(number=job.result["version"])
        elif round_.stage == Round.Stage.PPO:
            round_.policy_after = PolicyVersion.objects.get(number=job.result["policy_version"])
            round_.reward_model = RewardModelVersion.objects.get(number=job.result["reward_model"])
        round_.stage = NEXT_STAGE[round_.stage]
        if round_.stage == Round.Stage.DONE:
            round_.status, round_.finished_at = Round.Status.SUCCEEDED, timezone.now()
        round_.save()
        if round_.status == Round.Status.RUNNING and not loop.paused:
            start_stage(round_)


def stage_is_waiting(round_: Round) -> bool:
    """Running, with no unfinished job: it stopped before its next stage (a pause)."""
    return round_.status == Round.Status.RUNNING and not round_.jobs.exclude(status__in=Job.FINISHED).exists()


def pause_loop(user: AbstractBaseUser, reason: str = "") -> LoopState:
    with transaction.atomic():
        state = LoopState.objects.select_for_update().get(pk=LoopState.current().pk)
        if not state.paused:
            state.paused, state.paused_by, state.paused_at, state.reason = True, user, timezone.now(), reason[:500]
            state.save()
    log.warning("the loop was stopped by %s: %s", user, reason or "no reason given")
    return state


def resume_loop() -> LoopState:
    """Staff only (the view checks). A round that waited at a stage boundary goes on."""
    with transaction.atomic():
        state = LoopState.objects.select_for_update().get(pk=LoopState.current().pk)
        state.paused, state.paused_by, state.paused_at, state.reason = False, None, None, ""
        state.save()
        # job_finished holds the loop-state lock too, so a stage that finishes right now
        # is either seen as waiting here or started there, never both.
        waiting = Round.objects.select_for_update().filter(status=Round.Status.RUNNING).first()
        if waiting is not None and stage_is_waiting(waiting):
            start_stage(waiting)
    return state


def react_to_new_label() -> None:
    """After each label: with the automatic loop on, start a full round once enough new
    labels arrived (unless a round is running); otherwise just keep the reward model
    fresh. Nothing starts by itself while the loop is stopped."""
    if LoopState.current().paused:
        return
    if not settings.PREFLOOP_AUTO_LOOP:
        maybe_request_reward_training()
        return
    if running_round() is not None or not Prompt.objects.exists():
        return
    if labels_since_latest_reward_model() >= settings.PREFLOOP_LOOP_MIN_LABELS:
        try:
            start_round(Round.Kind.FULL, trigger=f"{settings.PREFLOOP_LOOP_MIN_LABELS} new labels")
        except RoundError as error:  # another label's trigger started it first
            log.info("automatic round not started: %s", error)
