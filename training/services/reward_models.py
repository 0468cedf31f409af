"""A run's reward-model versions: which labels they learn from, when training starts, how
a version is published, and how completions are scored with it.

Labels become pairs as `Label.preference_pairs` says: `a`/`b` give one pair, a K-way
ranking all K·(K−1)/2 of its pairs (trained in one batch). Ties and both-bad state no
ordering and the Bradley–Terry loss has no term for them, so they are left out of
training; they still count for agreement and stay in the raw export. A run learns from
the labels in its scope (`Run.label_scope`): its own, and a branch's inheritance.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from labeling.exporting import labels_for_export, ordered_completions_of
from labeling.models import Completion, Label
from training.ml.configs import config_from_dict, config_to_dict
from training.ml.reward import PreferencePair, RewardScorer, RewardTrainingConfig
from training.models import EvaluationPrompt, Job, PolicyVersion, RewardModelVersion, Run, json_safe
from training.services.artifacts import publish_artifact
from training.services.datasets import FOR_REWARD_MODEL, dataset_pairs, has_dataset_pairs, pinned_datasets
from training.services.jobs import enqueue_on_commit, job_type, this_worker, worker_launch_config
from training.services.runs import latest_reward_model

log = logging.getLogger(__name__)

PREFERENCE_CHOICES = (Label.Choice.A, Label.Choice.B, Label.Choice.RANKING)
NORMALIZATION_SAMPLES = 256
AUTO_REQUEST_INTERVAL_SECONDS = 60


def preference_labels(run: Run):
    """Labels with a preference that the run learns from. Labels on the run's evaluation
    prompts are left out (imported answers or a bake-off may put comparisons there): its
    reward model judges the versions on those prompts, so it must not have trained on
    them."""
    return (Label.objects.filter(run.label_scope(), choice__in=PREFERENCE_CHOICES)
            .exclude(comparison__prompt__in=EvaluationPrompt.objects.filter(run=run).values("prompt")))


def has_reward_training_data(run: Run) -> bool:
    """Labels with a preference, or an imported dataset chosen for the reward model."""
    return preference_labels(run).exists() or has_dataset_pairs(run, FOR_REWARD_MODEL)


def labels_since_latest_reward_model(run: Run) -> int:
    """Labels with a preference in the run's scope that its newest reward model has not seen."""
    latest = latest_reward_model(run)
    labels = preference_labels(run)
    return labels.filter(pk__gt=latest.last_label_id).count() if latest else labels.count()


def reward_model_trained_on(sender, label: Label, **kwargs) -> str | None:
    """Answers labeling's label_undo_requested: a label that a published reward model or
    a policy version trained on pairs (DPO, SFT) learned from is history, not a slip."""
    for version in RewardModelVersion.objects.filter(last_label_id__gte=label.pk).select_related("run"):
        if Label.objects.filter(version.run.label_scope(), pk=label.pk).exists():
            return f"reward model r{version.number} was trained on it"
    for version in PolicyVersion.objects.filter(inputs__last_label_id__gte=label.pk).select_related("run"):
        if Label.objects.filter(version.run.label_scope(), pk=label.pk).exists():
            return f"policy v{version.number} was trained on it"
    return None


def last_label_id() -> int:
    return Label.objects.aggregate(last=Max("pk"))["last"] or 0


def create_reward_training_job(run: Run, requested_by: AbstractBaseUser | None = None, reason: str = "manual",
                               round_=None) -> Job:
    """A pending reward-model job pinned to the run's reward config, its seed and every
    label so far. IntegrityError if one is already waiting (see request_reward_training)."""
    job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, run=run, requested_by=requested_by, round=round_,
                             params={"reason": reason, "last_label_id": last_label_id(),
                                     "datasets": pinned_datasets(run, FOR_REWARD_MODEL)})
    job.params["config"] = {**config_to_dict(reward_training_config(run)), "seed": job.pk}
    job.save(update_fields=["params"])
    return job


def request_reward_training(
    run: Run, requested_by: AbstractBaseUser | None = None, reason: str = "manual", round_=None
) -> Job:
    """The run's pending reward-model job, created and queued unless one is already
    waiting: a request made while a job waits is the same request, and extends it to the
    labels that arrived meanwhile (the job has not started, so nothing it did changes).
    A round adopts the waiting job as its stage. A request made while a job runs waits
    its turn."""
    existing = Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, run=run, status=Job.Status.PENDING).first()
    if existing is None:
        try:
            with transaction.atomic():
                job = create_reward_training_job(run, requested_by, reason, round_)
                enqueue_on_commit(job)
            return job
        except IntegrityError:  # another request created it between our check and insert
            existing = Job.objects.get(kind=Job.Kind.TRAIN_REWARD, run=run, status=Job.Status.PENDING)
    with transaction.atomic():
        waiting = Job.objects.select_for_update().get(pk=existing.pk)
        if waiting.status == Job.Status.PENDING:
            waiting.params = {**waiting.params, "last_label_id": max(waiting.params["last_label_id"],
                                                                     last_label_id()),
                              "datasets": pinned_datasets(run, FOR_REWARD_MODEL)}
            if round_ is not None and waiting.round_id is None:
                waiting.round = round_
            waiting.save(update_fields=["params", "round"])
    return waiting


def reward_training_config(run: Run) -> RewardTrainingConfig:
    return config_from_dict(RewardTrainingConfig, run.reward_config)


def maybe_request_reward_training(run: Run) -> Job | None:
    """The automatic trigger, after each label: train once enough new labels arrived.
    At most one automatic request a minute per run, so an unreachable broker (each
    request then fails) costs one failed job a minute, not one per label."""
    threshold = run.reward_auto_train_labels
    if threshold <= 0 or labels_since_latest_reward_model(run) < threshold:
        return None
    recent = timezone.now() - timedelta(seconds=AUTO_REQUEST_INTERVAL_SECONDS)
    if Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, run=run, created_at__gte=recent).exists():
        return None
    return request_reward_training(run, reason=f"{threshold} new labels")


def claim_reward_training(job: Job) -> bool:
    """Start the job unless another reward-model training of its run is running (then
    the caller retries later). The job rows are locked while deciding, so two workers
    cannot both start."""
    with transaction.atomic():
        active = list(
            Job.objects.select_for_update()
            .filter(kind=Job.Kind.TRAIN_REWARD, run_id=job.run_id, status__in=[Job.Status.PENDING,
                                                                                Job.Status.RUNNING])
            .order_by("pk")
        )
        if any(other.status == Job.Status.RUNNING and other.pk != job.pk for other in active):
            return False
        job.refresh_from_db()
        if job.is_finished:
            return False
        if job.status == Job.Status.RUNNING:
            log.warning("reward-model job %s was running when its worker died; starting it again", job.pk)
        return job.mark_running(this_worker())


def preference_pairs(labels) -> list[PreferencePair]:
    """The (chosen, rejected) pairs these labels imply, grouped by comparison."""
    pairs = []
    for label in labels_for_export().filter(pk__in=labels.values("pk"), choice__in=PREFERENCE_CHOICES):
        for chosen, rejected in label.preference_pairs(ordered_completions_of(label)):
            pairs.append(PreferencePair(
                label.comparison_id, label.comparison.prompt.messages, chosen.text, rejected.text, label.strength,
                chosen.ended, rejected.ended,
                tuple(chosen.token_ids) if chosen.token_ids is not None else None,
                tuple(rejected.token_ids) if rejected.token_ids is not None else None,
            ))
    return pairs


def normalization_samples(run: Run, pairs: list[PreferencePair]) -> list[tuple]:
    """Completions of the run's initial policy: rewards are shifted and scaled to mean 0,
    std 1 on them (Ziegler et al. 2019), so every version speaks the same units to the
    policy methods. A run trained on an imported dataset before its policy ever answered
    has none yet: the answers of its training pairs stand in (the next version, trained
    once comparisons exist, uses the policy's)."""
    completions = (
        Completion.objects.filter(policy_version=run.base_version).select_related("prompt").order_by("pk")
        [:NORMALIZATION_SAMPLES]
    )
    samples = [c.scored_text for c in completions]
    if samples:
        return samples
    answers = [(p.prompt, text, True, None) for p in pairs for text in (p.chosen, p.rejected)]
    return random.Random(0).sample(answers, min(NORMALIZATION_SAMPLES, len(answers)))


@job_type(Job.Kind.TRAIN_REWARD, queue="train", claim=claim_reward_training)
def run_reward_training_job(job: Job) -> RewardModelVersion | None:
    """Train the next version of the run's reward model on every label in its scope up
    to the job's pinned label id, warm-started from the run's latest version, and
    publish it (training/services/artifacts.py: a failure publishes nothing)."""
    run = job.run
    parent = latest_reward_model(run)
    config = config_from_dict(RewardTrainingConfig, job.params["config"])
    bound = job.params["last_label_id"]
    labels = preference_labels(run).filter(pk__lte=bound)
    launch = worker_launch_config()
    trained = {}  # the training result, for the job's summary

    def write(out_dir: Path):
        imported, trained["datasets"] = dataset_pairs(job.params.get("datasets", []), seed=config.seed)
        pairs = preference_pairs(labels) + imported
        if not pairs:
            raise ValueError("there are no labels with a preference (nor dataset pairs) to train on yet")
        warm_start = Path(parent.weights_dir) if parent and parent.base_model_dir == run.base_model_dir else None
        result = launch.train_reward_model(
            pairs, Path(run.base_model_dir), out_dir, config, warm_start_dir=warm_start,
            on_step=lambda step, total, metrics: job.report_progress(step, total, metrics),
            normalization_samples=normalization_samples(run, pairs),
        )
        trained["result"] = result
        return result

    def create_row(number: int, folder: Path, result) -> RewardModelVersion:
        return RewardModelVersion.objects.create(
            number=number, run=run, parent=parent, base_model_dir=run.base_model_dir, weights_dir=str(folder),
            label_count=labels.count(), last_label_id=bound, train_pairs=result.train_pairs,
            heldout_pairs=result.heldout_pairs, heldout_accuracy=result.heldout_accuracy,
            heldout_accuracy_imported=result.heldout_accuracy_imported,
            reward_mean=result.reward_mean, reward_std=result.reward_std, config=config_to_dict(config),
            metrics=json_safe(result.history), datasets=trained["datasets"],
        )

    try:
        version = publish_artifact(
            "reward_model", job, RewardModelVersion, write,
            manifest=lambda result: {"base_model_dir": run.base_model_dir, "config": config_to_dict(config),
                                     "reward_mean": result.reward_mean, "reward_std": result.reward_std,
                                     "last_label_id": bound, "datasets": trained["datasets"]},
            create_row=create_row,
        )
    except Exception as error:
        log.exception("reward-model job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    result = trained["result"]
    job.mark_succeeded({"version": version.number, "heldout_accuracy": result.heldout_accuracy,
                        "train_pairs": result.train_pairs, "dropped_too_long": result.dropped_too_long,
                        **launch.describe()})
    return version


def load_scorer(version: RewardModelVersion) -> RewardScorer:
    """Batch scoring with a version's normalization, and its ensemble for disagreement."""
    return RewardScorer.load(Path(version.base_model_dir), Path(version.weights_dir), version.reward_mean,
                             version.reward_std)
