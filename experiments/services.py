"""Experiments: create one from a design (one isolated run per arm and seed, labeled by
the simulated annotator only), and walk it: for each arm and seed, the arm's schedule
drives rounds through the ordinary round machinery and jobs (inline or on the Celery
workers: experiments/driving.py), the simulated annotator labels between rounds, and a
result is recorded after each round (experiments/measurements.py).

Schedules are peers in `SCHEDULES`:
- online: the label budget spread over the rounds; before each round the annotator
  labels the comparisons the current policy's queue serves first (rlhf recipe);
- offline: every label up front on the base policy's comparisons, one reward model on
  them, then policy updates that ask nobody (offline recipe).
"""

from __future__ import annotations

import logging
import math

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from experiments.designs import OFFLINE, ONLINE, Arm, Design, design_from_dict, design_to_dict
from experiments.driving import CeleryDriver, InlineDriver
from experiments.gold import GoldJudge, gold_judge
from experiments.measurements import label_comparisons, record_result
from experiments.models import ArmRun, Experiment
from labeling.models import LabeledBy, Prompt
from training.models import Job, PolicyVersion, RewardModelVersion, Round
from training.services import (
    RunSettings,
    create_generation_job,
    create_reward_training_job,
    create_run,
    default_settings,
    start_round,
)

log = logging.getLogger(__name__)

Driver = InlineDriver | CeleryDriver


class ExperimentError(RuntimeError):
    """An experiment that cannot go on; the message says where it stopped."""


def arm_run_settings(arm: Arm) -> RunSettings:
    """The run settings of an arm: the method's defaults, then the design's. Nothing
    starts by itself: the experiment drives every round and every reward model."""
    chosen = default_settings(arm.settings.get("method", "ppo"))
    for key in ("method", "query_selection", "update_prompts"):
        if key in arm.settings:
            chosen[key] = arm.settings[key]
    for key in ("method_config", "reward_config"):
        chosen[key] = {**chosen[key], **arm.settings.get(key, {})}
    chosen.update(auto_loop=False, reward_auto_train_labels=0)
    return RunSettings(**chosen).checked()


@transaction.atomic
def create_experiment(design: Design, mode: str, design_text: str = "",
                      created_by: AbstractBaseUser | None = None) -> Experiment:
    """An experiment and its isolated runs, one per arm and seed."""
    experiment = Experiment.objects.create(name=design.name, kind=design.kind, design=design_to_dict(design),
                                           design_text=design_text, mode=mode, created_by=created_by)
    candidates = max(design.label_batches(ONLINE)) * design.candidate_factor
    for arm in design.arms():
        settings = arm_run_settings(arm)
        for seed in design.seeds:
            run = create_run(f"experiment {experiment.pk}: {arm.name} seed {seed}", design.base_model_dir,
                             created_by=created_by, run_settings=settings,
                             description=f"Arm {arm.name} ({arm.schedule}) of {experiment}, seed {seed}.")
            # Its simulated annotator labels each comparison once, so none is overlapped
            # (labeling.services.overlap_share).
            run.labeled_by = LabeledBy.SIMULATOR
            run.comparison_prompts = math.ceil(candidates)
            # The design's, over the deployment's settings: every job of the arm reads them
            # from its run, in whichever process (this one or a Celery worker) runs it.
            run.sampling = {"max_new_tokens": design.max_new_tokens, "temperature": design.temperature,
                            "kl_samples": design.kl_samples, "evaluation_prompts": design.evaluation_prompts}
            run.save(update_fields=["labeled_by", "comparison_prompts", "sampling"])
            ArmRun.objects.create(experiment=experiment, arm=arm.name, schedule=arm.schedule, seed=seed, run=run)
    return experiment


def planned_jobs(experiment: Experiment) -> int:
    """How many jobs the whole experiment runs (for a progress bar)."""
    design = design_from_dict(experiment.design)
    return sum(SCHEDULES[arm_run.schedule].planned_jobs(design) for arm_run in experiment.arm_runs.all())


def run_experiment(experiment: Experiment, driver: Driver) -> Experiment:
    """Walk every arm at every seed, one after another; the experiment fails at the
    first round that fails (the arm's run keeps its jobs and error for reading)."""
    design = design_from_dict(experiment.design)
    if Prompt.objects.count() < 8:
        raise ExperimentError("an experiment needs prompts: import some first (manage.py import_prompts)")
    judge = gold_judge(design.gold.oracle, design.gold.model_dir)
    experiment.mark_running()
    try:
        for arm_run in experiment.arm_runs.select_related("run"):
            log.info("%s: %s", experiment, arm_run)
            SCHEDULES[arm_run.schedule].walk(ArmWalk(arm_run, design, judge, driver))
    except BaseException as error:  # Ctrl-C too: the page should not say "running" forever
        experiment.mark_finished(error=f"{type(error).__name__}: {error}")
        raise
    experiment.mark_finished()
    return experiment


class ArmWalk:
    """One arm at one seed being driven: the steps schedules are made of."""

    def __init__(self, arm_run: ArmRun, design: Design, judge: GoldJudge, driver: Driver):
        self.arm_run, self.run, self.design, self.judge, self.driver = arm_run, arm_run.run, design, judge, driver

    def generate_base_comparisons(self, labels: int) -> None:
        """Comparisons of the base policy's answers on prompts chosen and sampled with the
        arm's seed, so arms at the same seed see the same base answers."""
        prompts = math.ceil(labels * self.design.candidate_factor)
        job = create_generation_job(self.run, self.run.base_version, prompts, samples=2, seed=self.arm_run.seed)
        job.params["sampling"]["seed"] = self.arm_run.seed
        job.save(update_fields=["params"])
        self.succeeded(self.driver.run_job(job))

    def label(self, count: int) -> None:
        label_comparisons(self.arm_run, self.judge, self.design.gold.noise, count)

    def train_reward_model(self) -> RewardModelVersion:
        job = self.succeeded(self.driver.run_job(create_reward_training_job(self.run, reason=str(self.arm_run))))
        return RewardModelVersion.objects.get(number=job.result["version"])

    def round(self, recipe: str) -> Round:
        round_ = self.driver.run_round(lambda: start_round(self.run, recipe, trigger=f"experiment "
                                                                                     f"{self.arm_run.experiment_id}"))
        if round_.status != Round.Status.SUCCEEDED:
            raise ExperimentError(f"{self.arm_run}: {round_} {round_.status}: {round_.error}")
        return round_

    def record(self, index: int, version: PolicyVersion, reward_model: RewardModelVersion | None,
               round_: Round | None) -> None:
        record_result(self.arm_run, index, version, reward_model, self.judge,
                      up_to_round_number=round_.number if round_ else None)

    def succeeded(self, job: Job) -> Job:
        if job.status != Job.Status.SUCCEEDED:
            raise ExperimentError(f"{self.arm_run}: {job} {job.status}: {job.error}")
        return job


class Schedule:
    name: str

    def planned_jobs(self, design: Design) -> int:
        raise NotImplementedError

    def walk(self, walk: ArmWalk) -> None:
        raise NotImplementedError


class OnlineSchedule(Schedule):
    name = ONLINE

    def planned_jobs(self, design: Design) -> int:
        return 1 + 4 * design.rounds  # base comparisons, then rlhf rounds of four stages

    def walk(self, walk: ArmWalk) -> None:
        batches = walk.design.label_batches(ONLINE)
        walk.generate_base_comparisons(batches[0])
        walk.label(batches[0])
        for index in range(1, walk.design.rounds + 1):
            round_ = walk.round("rlhf")
            if index == 1:
                walk.record(0, walk.run.base_version, round_.reward_model, None)
            walk.record(index, round_.policy_after, round_.reward_model, round_)
            if index < walk.design.rounds:
                walk.label(batches[index])  # the new policy's comparisons, as the queue orders them


class OfflineSchedule(Schedule):
    name = OFFLINE

    def planned_jobs(self, design: Design) -> int:
        return 2 + 2 * design.rounds  # base comparisons, one reward model, then update + evaluation

    def walk(self, walk: ArmWalk) -> None:
        walk.generate_base_comparisons(walk.design.label_budget)
        walk.label(walk.design.label_budget)
        reward_model = walk.train_reward_model()
        for index in range(1, walk.design.rounds + 1):
            round_ = walk.round("offline")
            if index == 1:
                walk.record(0, walk.run.base_version, reward_model, None)
            walk.record(index, round_.policy_after, reward_model, round_)


SCHEDULES: dict[str, Schedule] = {schedule.name: schedule for schedule in (OnlineSchedule(), OfflineSchedule())}


def experiment_runs(experiment: Experiment):
    """The runs of the experiment's arms (for its job list)."""
    return [arm_run.run for arm_run in experiment.arm_runs.select_related("run")]


