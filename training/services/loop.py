"""What follows what in the loop, in one place, read top to bottom.

Every reaction of the training side to an event is a direct call listed here:

- a job finished (succeeded, failed or cancelled): its round moves to its next stage,
  its bake-off to its next step, an import that did not finish is cleaned up, webhooks
  hear of a failed job;
- a label was committed: an automatic round starts, or the reward model is refreshed;
  webhooks counting the run's labels hear of each N-th;
- an annotator asks to undo a label: refused once something published learned from it.

The job queue (jobs.py) and the labeling app sit below this module (it imports the
modules that import them), so TrainingConfig.ready hands these functions to them once;
that is the only wiring.
"""

from __future__ import annotations

from collections.abc import Callable

from labeling.models import Label
from training.models import Job
from training.services.bakeoffs import advance_bakeoff
from training.services.datasets import clean_up_after_import_job
from training.services.reward_models import reward_model_trained_on
from training.services.rounds import advance_round, react_to_new_label
from webhooks.services import record_job_failure, record_label_count

JOB_FOLLOWERS: tuple[Callable[[Job], None], ...] = (
    advance_round,  # the round whose stage this job was: record it, queue the next stage
    clean_up_after_import_job,  # a dataset import that ended unfinished: fail it, drop the upload
    advance_bakeoff,  # the bake-off this job trained or evaluated for: its next step
    record_job_failure,  # a failed job: a job.failed webhook event (published versions and rounds record theirs)
)
"""Each looks at every finished job and acts only on its own; each is idempotent (a
redelivered task announces the same job again)."""


def on_job_finished(job: Job) -> None:
    for follower in JOB_FOLLOWERS:
        follower(job)


def on_label_submitted(run_id: int) -> None:
    """With the run's automatic loop on, enough new labels start a round; otherwise the
    label asks for a fresh reward model (a head refit, or a full retrain). Webhooks
    counting labels first: a round that fails to start must not hold back their event."""
    record_label_count(run_id)
    react_to_new_label(run_id)


def undo_refusal(label: Label) -> str | None:
    """A label a published reward model or policy version learned from is history."""
    return reward_model_trained_on(label)
