"""Reward-model versions: which labels they learn from, when training starts, how a
version is published, and how completions are scored with it.

Labels become pairs as `Label.preference_pairs` says: `a`/`b` give one pair, a K-way
ranking all K·(K−1)/2 of its pairs (trained in one batch). Ties and both-bad state no
ordering and the Bradley–Terry loss has no term for them, so they are left out of
training; they still count for agreement and stay in the raw export.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from labeling.exporting import labels_for_export, ordered_completions_of
from labeling.models import Completion, Label
from training.ml.reward import PreferencePair, RewardScorer, RewardTrainingConfig, train_reward_model
from training.models import Job, PolicyVersion, RewardModelVersion
from training.services.jobs import enqueue_on_commit

log = logging.getLogger(__name__)

PREFERENCE_CHOICES = (Label.Choice.A, Label.Choice.B, Label.Choice.RANKING)
NORMALIZATION_SAMPLES = 256
AUTO_REQUEST_INTERVAL_SECONDS = 60


def latest_reward_model() -> RewardModelVersion | None:
    return RewardModelVersion.objects.order_by("-number").first()


def labels_since_latest_reward_model() -> int:
    """Labels with a preference that the newest version has not seen."""
    latest = latest_reward_model()
    newer = Label.objects.filter(choice__in=PREFERENCE_CHOICES)
    return newer.filter(pk__gt=latest.last_label_id).count() if latest else newer.count()


def reward_training_config() -> RewardTrainingConfig:
    return RewardTrainingConfig(
        use_lora=not settings.PREFLOOP_RM_FULL_FINETUNE,
        learning_rate=settings.PREFLOOP_RM_LEARNING_RATE or None,
        epochs=settings.PREFLOOP_RM_EPOCHS,
        batch_size=settings.PREFLOOP_RM_BATCH_SIZE,
        ensemble_size=settings.PREFLOOP_RM_ENSEMBLE_SIZE,
    )


def request_reward_training(
    requested_by: AbstractBaseUser | None = None, reason: str = "manual", round_=None
) -> Job:
    """The pending reward-model job, created and queued unless one is already waiting:
    requests made while a job waits are the same request (a round adopts it as its
    stage). One made while a job runs waits its turn and will include the labels that
    arrived meanwhile."""
    from training.tasks import train_reward_model as task

    existing = Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, status=Job.Status.PENDING).first()
    if existing is None:
        try:
            with transaction.atomic():
                job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, params={"reason": reason},
                                         requested_by=requested_by, round=round_)
                enqueue_on_commit(job, task)
            return job
        except IntegrityError:  # another request created it between our check and insert
            existing = Job.objects.get(kind=Job.Kind.TRAIN_REWARD, status=Job.Status.PENDING)
    if round_ is not None and existing.round_id is None:
        Job.objects.filter(pk=existing.pk, round=None).update(round=round_)
        existing.round = round_
    return existing


def maybe_request_reward_training() -> Job | None:
    """The automatic trigger, after each label: train once enough new labels arrived.
    At most one automatic request a minute, so an unreachable broker (each request then
    fails) costs one failed job a minute, not one per label."""
    threshold = settings.PREFLOOP_RM_AUTO_TRAIN_LABELS
    if threshold <= 0 or labels_since_latest_reward_model() < threshold:
        return None
    recent = timezone.now() - timedelta(seconds=AUTO_REQUEST_INTERVAL_SECONDS)
    if Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, created_at__gte=recent).exists():
        return None
    return request_reward_training(reason=f"{threshold} new labels")


def claim_reward_training(job: Job) -> bool:
    """Start the job unless another reward-model training is running (then the caller
    retries later). The job rows are locked while deciding, so two workers cannot
    both start."""
    with transaction.atomic():
        active = list(
            Job.objects.select_for_update()
            .filter(kind=Job.Kind.TRAIN_REWARD, status__in=[Job.Status.PENDING, Job.Status.RUNNING])
            .order_by("pk")
        )
        if any(other.status == Job.Status.RUNNING and other.pk != job.pk for other in active):
            return False
        job.refresh_from_db()
        if job.is_finished:
            return False
        if job.status == Job.Status.RUNNING:
            log.warning("reward-model job %s was running when its worker died; starting it again", job.pk)
        job.mark_running()
    return True


def preference_pairs(labels) -> list[PreferencePair]:
    """The (chosen, rejected) pairs these labels imply, grouped by comparison."""
    pairs = []
    for label in labels_for_export().filter(pk__in=labels.values("pk"), choice__in=PREFERENCE_CHOICES):
        for chosen, rejected in label.preference_pairs(ordered_completions_of(label)):
            pairs.append(
                PreferencePair(label.comparison_id, label.comparison.prompt.messages, chosen.text, rejected.text,
                               label.strength, chosen.ended, rejected.ended)
            )
    return pairs


def normalization_samples() -> list[tuple[list[dict], str, bool]]:
    """Completions of the initial policy: rewards are shifted and scaled to mean 0, std 1
    on them (Ziegler et al. 2019), so every version speaks the same units to PPO."""
    completions = (
        Completion.objects.filter(policy_version__number=0).select_related("prompt").order_by("pk")
        [:NORMALIZATION_SAMPLES]
    )
    return [(c.prompt.messages, c.text, c.ended) for c in completions]


def run_reward_training_job(job: Job) -> RewardModelVersion | None:
    """Train the next version on every label so far and publish it: the weights are
    written to a side folder, renamed into place, and the row is created last, so a
    failure at any point publishes nothing."""
    base = PolicyVersion.objects.get(number=0)
    parent = latest_reward_model()
    number = parent.number + 1 if parent else 1
    root = Path(settings.PREFLOOP_ARTIFACT_DIR) / "reward-models"
    final_dir, partial_dir = root / f"v{number}", root / f"v{number}.partial-job{job.pk}"
    config = reward_training_config()
    try:
        last_label_id = Label.objects.aggregate(last=Max("pk"))["last"] or 0
        labels = Label.objects.filter(pk__lte=last_label_id)
        pairs = preference_pairs(labels)
        if not pairs:
            raise ValueError("there are no labels with a preference to train on yet")
        shutil.rmtree(partial_dir, ignore_errors=True)  # left by a crashed attempt
        warm_start = Path(parent.weights_dir) if parent and parent.base_model_dir == base.base_model_dir else None
        result = train_reward_model(
            pairs, Path(base.base_model_dir), partial_dir, config, warm_start_dir=warm_start,
            on_step=lambda step, total, metrics: job.report_progress(step, total, metrics),
            normalization_samples=normalization_samples(),
        )
        if final_dir.exists():
            raise FileExistsError(f"{final_dir} exists but no version row points at it; move it away")
        partial_dir.rename(final_dir)
        try:
            version = RewardModelVersion.objects.create(
                number=number, parent=parent, base_model_dir=base.base_model_dir, weights_dir=str(final_dir),
                label_count=labels.filter(choice__in=PREFERENCE_CHOICES).count(), last_label_id=last_label_id,
                train_pairs=result.train_pairs, heldout_pairs=result.heldout_pairs,
                heldout_accuracy=result.heldout_accuracy, reward_mean=result.reward_mean,
                reward_std=result.reward_std, config=config.to_dict(), metrics=result.history,
            )
        except Exception:
            shutil.rmtree(final_dir, ignore_errors=True)
            raise
    except Exception as error:
        log.exception("reward-model job %s failed", job.pk)
        shutil.rmtree(partial_dir, ignore_errors=True)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    finally:
        shutil.rmtree(partial_dir.with_name(partial_dir.name + ".trainer"), ignore_errors=True)
    job.mark_succeeded({"version": number, "heldout_accuracy": result.heldout_accuracy,
                        "train_pairs": result.train_pairs, "dropped_too_long": result.dropped_too_long})
    return version


def load_scorer(version: RewardModelVersion) -> RewardScorer:
    """Batch scoring with a version's normalization, and its ensemble for disagreement."""
    return RewardScorer.load(Path(version.base_model_dir), Path(version.weights_dir), version.reward_mean,
                             version.reward_std)
