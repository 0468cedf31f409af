"""Bake-offs: several methods trained from the run's head on the same labels and the same
reward model, judged blind by people, the winner promoted to be the run's head.

The state machine (each step taken when a job of the bake-off finishes: the loop's
`on_job_finished` calls `advance_bakeoff`; every step is idempotent, a redelivered task
announces again; the transitions are BakeOff's methods):

    training   → one policy-update job per method, all created at once, pinned alike
                 (start version, reward model, labels up to one id, prompts, datasets)
    evaluating → once every candidate job finished and at least one succeeded: one
                 evaluation job answers the run's evaluation prompts with every version
                 that has not yet (the candidates; the start if it never did), and the
                 pinned reward model scores the answers
    judging    → comparisons of every pair of {start, candidates} per evaluation prompt,
                 blind and shuffled, queued among the other work
    failed     → every candidate failed, or the evaluation did (a failed candidate alone
                 is shown failed and the others go on)

While the run is paused (the stop button), a bake-off whose candidates are done waits
before its evaluation, as a round waits before its next stage; resuming moves it on.

Candidate jobs belong to no round, so nothing moves the run's head while they train;
only `promote_candidate` does, and it changes nothing else.

**Labels on bake-off comparisons train nothing.** They judge answers to the run's
evaluation prompts, which are held out of every comparison and policy update so that
versions are measured on prompts nothing learned from; a reward model (or DPO, or SFT on
chosen answers) trained on them would turn the yardstick into training data, and the
next bake-off judged by that reward model would no longer be blind to its prompts.
`Run.label_scope` leaves them out of everything the run learns from; they count in the
Bradley–Terry rankings, as people's judgements of versions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from itertools import combinations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Max, Min

from labeling.models import Comparison
from labeling.services import create_comparison
from training.ml.methods import method_named
from training.models import BakeOff, BakeOffCandidate, EvaluationSample, Job, PolicyVersion, Run
from training.services.evaluation import create_evaluation_job
from training.services.jobs import enqueue_on_commit, keep_for_this_process, run_job_now
from training.services.policy_updates import PolicyUpdateError, create_policy_update_job
from training.services.reward_models import last_label_id
from training.services.runs import latest_reward_model

log = logging.getLogger(__name__)


class BakeOffError(ValueError):
    """A bake-off cannot start, or a candidate cannot be promoted; the message says why."""


# Who runs a bake-off's jobs, by BakeOff.dispatch: the workers, or (a command's inline
# mode) `run_bakeoff_here` in the process that started it, the job sweep leaving those
# jobs alone while they wait their turn.
DISPATCHERS: dict[str, Callable[[Job], None]] = {
    BakeOff.Dispatch.QUEUE: enqueue_on_commit,
    BakeOff.Dispatch.INLINE: keep_for_this_process,
}


def candidate_config(run: Run, method: str) -> dict:
    """The config a candidate starts with: the run's own for the run's method (as the
    researcher tuned it), the registry's defaults for every other."""
    return run.method_config if method == run.method else {}


def start_bakeoff(run: Run, methods: Sequence[str], requested_by: AbstractBaseUser | None = None,
                  dispatch: str = BakeOff.Dispatch.QUEUE) -> BakeOff:
    """Create a bake-off of `methods` from the run's head, with one policy-update job per
    method, all pinned to the same start, reward model, labels and prompts. All or
    nothing: a method that cannot train now (no reward model, no pairs) refuses the
    whole bake-off."""
    names = list(dict.fromkeys(methods))  # each once, in the order given
    if not names:
        raise BakeOffError("choose at least one method")
    for name in names:
        method_named(name)  # ValueError naming the choices
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.head_id is None:
            raise BakeOffError(f"{locked} has no head version to start from")
        bakeoff = BakeOff.objects.create(run=locked, start=locked.head, reward_model=latest_reward_model(locked),
                                         label_bound=last_label_id(), dispatch=dispatch, created_by=requested_by)
        jobs = []
        for name in names:
            try:
                job = create_policy_update_job(
                    locked, bakeoff.start, bakeoff.reward_model, requested_by=requested_by, method=name,
                    method_config=candidate_config(locked, name), label_bound=bakeoff.label_bound,
                    prompt_seed=bakeoff.pk)
            except PolicyUpdateError as error:
                raise BakeOffError(str(error)) from None  # it names the method
            BakeOffCandidate.objects.create(bakeoff=bakeoff, method=name, config=job.params["config"], job=job)
            jobs.append(job)
        for job in jobs:
            DISPATCHERS[bakeoff.dispatch](job)
    return bakeoff


def bakeoff_of(job: Job) -> BakeOff | None:
    """The bake-off a job works for, if any."""
    if job.kind == Job.Kind.POLICY_UPDATE:
        candidate = BakeOffCandidate.objects.filter(job=job).select_related("bakeoff").first()
        return candidate.bakeoff if candidate else None
    if job.kind == Job.Kind.EVALUATE:
        return BakeOff.objects.filter(evaluation_job=job).first()
    return None


def advance_bakeoff(job: Job) -> None:
    """Move the job's bake-off on (see the module docstring). Safe to call twice for
    the same job: each transition checks the status it starts from, under the row lock."""
    if not job.is_finished or (found := bakeoff_of(job)) is None:
        return
    with transaction.atomic():
        # The run row first, as resume_runs takes it: a resume and a finishing job see
        # each other's pause state, so a waiting bake-off is moved on exactly once.
        run = Run.objects.select_for_update().get(pk=found.run_id)
        bakeoff = BakeOff.objects.select_for_update().get(pk=found.pk)
        record_candidate_versions(bakeoff)
        if bakeoff.status == BakeOff.Status.TRAINING and not run.paused:
            finish_training(bakeoff)
        elif bakeoff.status == BakeOff.Status.EVALUATING and job.pk == bakeoff.evaluation_job_id:
            finish_evaluation(bakeoff, job)


def resume_bakeoffs(run: Run) -> None:
    """After a paused run resumes (resume_runs holds its row lock): its bake-offs whose
    candidates all finished while it was paused go on to their evaluation. Like a
    round, a bake-off starts no new job while its run is paused."""
    for bakeoff in BakeOff.objects.select_for_update().filter(run=run, status=BakeOff.Status.TRAINING):
        finish_training(bakeoff)


def record_candidate_versions(bakeoff: BakeOff) -> None:
    """Each candidate whose job succeeded gets the version it published."""
    for candidate in bakeoff.candidates.filter(version=None, job__status=Job.Status.SUCCEEDED).select_related("job"):
        candidate.version = PolicyVersion.objects.get(number=candidate.job.result["policy_version"])
        candidate.save(update_fields=["version"])


def finish_training(bakeoff: BakeOff) -> None:
    """Once no candidate job is left to run: evaluate, or fail if none succeeded."""
    candidates = list(bakeoff.candidates.select_related("job"))
    if any(c.job is None or not c.job.is_finished for c in candidates):
        return
    if not any(c.version_id for c in candidates):
        bakeoff.fail("every candidate failed: " + "; ".join(
            f"{c.method}: {c.job.error if c.job else 'its job is gone'}" for c in candidates))
        return
    job = create_evaluation_job(bakeoff.run, requested_by=bakeoff.created_by)
    # Judged by the bake-off's own reward model, not whichever is newest by then.
    job.params["reward_model"] = bakeoff.reward_model.number if bakeoff.reward_model_id else None
    job.save(update_fields=["params"])
    bakeoff.start_evaluating(job)
    DISPATCHERS[bakeoff.dispatch](job)


def finish_evaluation(bakeoff: BakeOff, job: Job) -> None:
    if job.status != Job.Status.SUCCEEDED:
        bakeoff.fail(f"the evaluation failed: {job.error or job.status}")
        return
    comparisons = queue_bakeoff_comparisons(bakeoff)
    bakeoff.comparisons.add(*comparisons)
    bakeoff.start_judging()


def players_of(bakeoff: BakeOff) -> list[PolicyVersion]:
    """The start, then each candidate that published a version."""
    return [bakeoff.start, *(c.version for c in bakeoff.candidates.select_related("version") if c.version_id)]


def queue_bakeoff_comparisons(bakeoff: BakeOff) -> list[Comparison]:
    """For each evaluation prompt of the run, a comparison of every pair of players that
    answered it (every candidate against every other and against the start), in a
    random order, each shuffled left/right by create_comparison, at priorities spread
    over the queue's (see interleaved_priorities). Nothing about the players is stored
    on the comparison but the completions, which annotators never see the origin of."""
    run = bakeoff.run
    players = players_of(bakeoff)
    answers = {(s.prompt_id, s.policy_version_id): s.completion
               for s in EvaluationSample.objects.filter(policy_version__in=players, prompt__evaluations__run=run)
               .select_related("completion")}
    rng = random.Random(bakeoff.pk)
    wanted = [(entry.prompt, answers[entry.prompt_id, one.pk], answers[entry.prompt_id, other.pk])
              for entry in run.evaluation_prompts.select_related("prompt")
              for one, other in combinations(players, 2)
              if (entry.prompt_id, one.pk) in answers and (entry.prompt_id, other.pk) in answers]
    rng.shuffle(wanted)
    priorities = interleaved_priorities(len(wanted), rng)
    return [create_comparison(run, prompt, [first, second], source=Comparison.Source.BAKEOFF, priority=priority,
                              rng=rng)
            for (prompt, first, second), priority in zip(wanted, priorities, strict=True)]


def interleaved_priorities(count: int, rng: random.Random) -> list[float]:
    """Priorities drawn uniformly from the range of the comparisons waiting in the queue
    now, so annotators meet bake-off comparisons mixed with the other work, neither all
    first (starving the loop) nor all last (never judged while the loop runs). With an
    empty queue, or one of equal priorities, they take that priority and follow the
    waiting work in order of creation."""
    waiting = Comparison.objects.filter(label_count__lt=F("labels_needed")).exclude(source=Comparison.Source.BAKEOFF)
    bounds = waiting.aggregate(low=Min("priority"), high=Max("priority"))
    low, high = bounds["low"] or 0.0, bounds["high"] or 0.0
    return [rng.uniform(low, high) for _ in range(count)]


def promote_candidate(candidate: BakeOffCandidate) -> PolicyVersion:
    """Make the candidate's version the run's head (staff only; the views check). The
    other candidates stay as sibling branches of the lineage; nothing else changes.
    A round already running keeps its start and, having seen the head move, leaves it
    where the promotion put it (PolicyUpdateStage.record)."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=candidate.bakeoff.run_id)
        candidate = BakeOffCandidate.objects.select_related("version").get(pk=candidate.pk)
        if candidate.version is None:
            raise BakeOffError(f"the {candidate.method} candidate has no version: its training failed or is not done")
        run.head = candidate.version
        run.save(update_fields=["head"])
        BakeOff.objects.filter(pk=candidate.bakeoff_id).update(promoted=candidate)
    return candidate.version


def run_bakeoff_here(bakeoff: BakeOff, on_job: Callable[[Job], None] | None = None) -> BakeOff:
    """Run an inline bake-off's jobs in this process, one after another, until it is
    judging or failed (a command's explicit choice, never a fallback for a broker that
    is down). Each finished job is announced, which moves the bake-off on."""
    while True:
        bakeoff.refresh_from_db()
        if bakeoff.is_settled:
            return bakeoff
        pending = bakeoff_jobs(bakeoff).filter(status=Job.Status.PENDING).order_by("pk").first()
        if pending is None:
            why = "its run is paused (the workers take it on once resumed)" if bakeoff.run.paused else \
                "it waits on jobs that another process runs"
            if bakeoff.run.paused:  # once resumed, nobody here runs what comes next
                BakeOff.objects.filter(pk=bakeoff.pk).update(dispatch=BakeOff.Dispatch.QUEUE)
            raise BakeOffError(f"{bakeoff} stopped here: {why}")
        if on_job is not None:
            on_job(pending)
        run_job_now(pending)


def bakeoff_jobs(bakeoff: BakeOff):
    ids = [c.job_id for c in bakeoff.candidates.all() if c.job_id]
    if bakeoff.evaluation_job_id:
        ids.append(bakeoff.evaluation_job_id)
    return Job.objects.filter(pk__in=ids)
