"""Round stages as peers: each knows which kind of job does its work, how to create
that job for a round, and what to record on the round when the job succeeded. A recipe
(training/recipes.py) is a list of their names; the round state machine
(training/services/rounds.py) walks it without knowing what any stage does."""

from __future__ import annotations

from training import recipes
from training.models import Job, PolicyVersion, RewardModelVersion, Round, Run
from training.services.evaluation import create_evaluation_job
from training.services.generation import create_generation_job
from training.services.jobs import enqueue_on_commit
from training.services.policy_updates import create_policy_update_job
from training.services.reward_models import request_reward_training
from training.services.runs import latest_reward_model


class Stage:
    name: str
    job_kind: str

    def create_job(self, round_: Round) -> Job:
        """Create the stage's job and queue it once the transaction commits."""
        raise NotImplementedError

    def record(self, round_: Round, job: Job) -> None:
        """Note on the round what the succeeded job produced (saved by the caller)."""


class RewardModelStage(Stage):
    name, job_kind = recipes.REWARD_MODEL, Job.Kind.TRAIN_REWARD

    def create_job(self, round_: Round) -> Job:
        # A reward-model job already waiting (the button, the automatic trigger) becomes
        # this stage; single flight means there is never a second one.
        return request_reward_training(round_.run, reason=str(round_), round_=round_)

    def record(self, round_: Round, job: Job) -> None:
        round_.reward_model = RewardModelVersion.objects.get(number=job.result["version"])


class PolicyUpdateStage(Stage):
    name, job_kind = recipes.POLICY_UPDATE, Job.Kind.POLICY_UPDATE

    def create_job(self, round_: Round) -> Job:
        judge = round_.reward_model or latest_reward_model(round_.run)
        job = create_policy_update_job(round_.run, round_.policy_before, judge, round_=round_)
        enqueue_on_commit(job)
        return job

    def record(self, round_: Round, job: Job) -> None:
        round_.policy_after = PolicyVersion.objects.get(number=job.result["policy_version"])
        if job.result.get("reward_model") is not None:
            round_.reward_model = RewardModelVersion.objects.get(number=job.result["reward_model"])
        # The run's head moves on, unless someone moved it meanwhile (a promotion).
        Run.objects.filter(pk=round_.run_id, head=round_.policy_before).update(head=round_.policy_after)


class ComparisonsStage(Stage):
    """New-vs-new comparisons (for the next reward model), and the newest version
    against the one the round started from and against the base (human win rates on the
    progress pages; the Anthropic HH runs kept older snapshots in the pool for the same
    reason), on a sample of prompts."""

    name, job_kind = recipes.COMPARISONS, Job.Kind.GENERATE

    def create_job(self, round_: Round) -> Job:
        run = round_.run
        new = round_.policy_after or round_.policy_before
        versus = sorted({round_.policy_before.number, run.base_version.number} - {new.number})
        job = create_generation_job(run, new, run.comparison_prompts, samples=2, versus=versus, round_=round_,
                                    seed=round_.number)
        enqueue_on_commit(job)
        return job


class EvaluationStage(Stage):
    name, job_kind = recipes.EVALUATION, Job.Kind.EVALUATE

    def create_job(self, round_: Round) -> Job:
        job = create_evaluation_job(round_.run, round_)
        enqueue_on_commit(job)
        return job


STAGES: dict[str, Stage] = {stage.name: stage for stage in (RewardModelStage(), PolicyUpdateStage(),
                                                            ComparisonsStage(), EvaluationStage())}
