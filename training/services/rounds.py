"""The loop: rounds that walk their run's recipe one stage (one job) after another; the
stop button; automatic rounds.

`start_round` queues the first stage's job. A round moves on when that job finishes:
the loop's `on_job_finished` (training/services/loop.py) calls `advance_round`, which
records what the stage made and queues the next stage's job, until the recipe is done.
While a run is paused, its running round waits before its next stage and no automatic
round starts; resuming picks up where it waited.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max

from labeling.models import Prompt
from training.ml.methods import PAIRS, REWARD_MODEL, method_named
from training.models import Job, Round, Run
from training.recipes import recipe_named
from training.services.bakeoffs import resume_bakeoffs
from training.services.datasets import FOR_METHODS, has_dataset_pairs
from training.services.policy_updates import PolicyUpdateError
from training.services.reward_models import has_reward_training_data, maybe_request_reward_training, preference_labels
from training.services.runs import latest_reward_model
from training.services.stages import STAGES
from webhooks.services import record_round_outcome

log = logging.getLogger(__name__)


class RoundError(ValueError):
    """A round cannot start now; the message says why."""


def running_round(run: Run) -> Round | None:
    return Round.objects.filter(run=run, status=Round.Status.RUNNING).order_by("-number").first()


def check_round_can_start(run: Run, stages: tuple[str, ...]) -> None:
    """What the run's method needs that the recipe will not make by itself."""
    method = method_named(run.method)
    trains_reward_model = REWARD_MODEL in stages
    if REWARD_MODEL in method.needs and not trains_reward_model and latest_reward_model(run) is None:
        raise RoundError(f"{method.title} needs a reward model and there is none yet: run an RLHF round, or train one")
    if PAIRS in method.needs and not (preference_labels(run).exists() or has_dataset_pairs(run, FOR_METHODS)):
        raise RoundError("there are no labels with a preference yet: label some comparisons first (or choose an "
                         "imported dataset for the methods)")
    if trains_reward_model and not has_reward_training_data(run):
        raise RoundError("there are no labels with a preference yet: label some comparisons first (or choose an "
                         "imported dataset for the reward model)")
    if run.head_id is None:
        raise RoundError(f"{run} has no head version")


def start_round(run: Run, recipe: str | None = None, requested_by: AbstractBaseUser | None = None,
                trigger: str = "manual") -> Round:
    """Start a round of `run` that walks `recipe` (the run's own by default): its first
    stage's job is queued now, and `advance_round` starts each next one when the job
    before it finishes. Staff may start one while the run is paused (pausing holds
    automatic rounds)."""
    chosen = recipe_named(recipe or run.recipe)
    for _ in range(3):  # another run's round may take the same number at the same moment
        try:
            with transaction.atomic():
                # The run row is the lock: two starts at once (a click and an automatic
                # trigger) queue up here, so the second sees the first's round.
                locked = Run.objects.select_for_update().get(pk=run.pk)
                if (current := running_round(locked)) is not None:
                    raise RoundError(f"{current} is still running; one round per run at a time")
                check_round_can_start(locked, chosen.stages)
                number = (Round.objects.aggregate(last=Max("number"))["last"] or 0) + 1
                round_ = Round.objects.create(
                    number=number, run=locked, recipe=chosen.name, stages=list(chosen.stages),
                    stage=chosen.stages[0], policy_before=locked.head, requested_by=requested_by, trigger=trigger,
                )
                try:
                    start_stage(round_)
                except PolicyUpdateError as error:
                    raise RoundError(str(error)) from None
                return round_
        except IntegrityError:
            log.info("round number taken by another run just now; trying again")
    raise RoundError("could not number the round; try again")


def start_stage(round_: Round) -> Job:
    """Create and queue the job for the round's current stage."""
    return STAGES[round_.stage].create_job(round_)


def advance_round(job: Job) -> None:
    """Move the job's round on: record what the stage produced, then start the next
    stage (or wait, if the run is paused). A failed stage fails the round. Safe to call
    twice for the same job (a redelivered task does): only the current stage's job
    moves the round."""
    if job.round_id is None or not job.is_finished:
        return
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=job.run_id)
        round_ = Round.objects.select_for_update().get(pk=job.round_id)
        if round_.status != Round.Status.RUNNING or STAGES[round_.stage].job_kind != job.kind:
            return
        if job.status != Job.Status.SUCCEEDED:
            round_.fail(job.error or f"the {round_.stage} job was {job.status}")
            record_round_outcome(round_)  # webhooks, in this transaction
            return
        STAGES[round_.stage].record(round_, job)
        round_.advance()
        record_round_outcome(round_)  # webhooks hear of a round that finished
        if round_.status == Round.Status.RUNNING and not run.paused:
            start_stage_or_fail(round_)


def start_stage_or_fail(round_: Round) -> None:
    """Queue the round's current stage; a stage that cannot start now fails the round."""
    try:
        start_stage(round_)
    except PolicyUpdateError as error:
        round_.fail(str(error))
        record_round_outcome(round_)


def resume_runs(runs) -> int:
    """Staff only (the views check). Each run's round that waited at a stage boundary
    goes on, and so does each bake-off that waited before its evaluation. Returns how many runs were resumed."""
    resumed = 0
    for run in runs:
        with transaction.atomic():
            # advance_round holds the run lock too, so a stage that finishes right now is
            # either seen as waiting here or started there, never both.
            locked = Run.objects.select_for_update().get(pk=run.pk)
            if not locked.paused:
                continue
            locked.resume()
            resumed += 1
            resume_bakeoffs(locked)
            waiting = Round.objects.select_for_update().filter(run=locked, status=Round.Status.RUNNING).first()
            if waiting is not None and waiting.waits_before_next_stage:
                start_stage_or_fail(waiting)
    return resumed


def labels_since_last_round(run: Run) -> int:
    """Labels with a preference in the run's scope since its last round started."""
    labels = preference_labels(run)
    last = Round.objects.filter(run=run).order_by("-number").first()
    return labels.filter(created_at__gt=last.created_at).count() if last else labels.count()


def react_to_new_label(run_id: int) -> None:
    """After each label: with the run's automatic loop on, start a round once enough new
    labels arrived (unless one is running); otherwise keep its reward model fresh. The
    loop's rounds make the full retrains, so between them a label asks only for a head
    refit (the queue's disagreement and the next update read the newest version). Nothing
    starts by itself while the run is paused."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None or run.paused:
        return
    if (run.auto_loop and running_round(run) is None and Prompt.objects.exists()
            and labels_since_last_round(run) >= run.loop_min_labels):
        try:
            start_round(run, trigger=f"{run.loop_min_labels} new labels")
            return  # the round trains a reward model on this label
        except RoundError as error:  # another label's trigger started it first
            log.info("automatic round of %s not started: %s", run, error)
    maybe_request_reward_training(run, full_retrains=not run.auto_loop)

