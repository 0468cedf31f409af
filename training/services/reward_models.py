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
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from labeling.models import Comparison, ComparisonItem, Completion, Label, implied_pairs
from training.ml.configs import config_from_dict, config_to_dict
from training.ml.preference_pairs import PreferencePair
from training.ml.reward_features import FEATURES_FILE
from training.ml.reward_refit import refit_reward_head
from training.ml.reward_scoring import RewardScorer
from training.ml.reward_training import RewardTrainingConfig, RewardTrainingResult
from training.models import EvaluationPrompt, Job, PolicyVersion, RewardModelVersion, Run, json_safe
from training.services.artifacts import publish_artifact
from training.services.datasets import FOR_REWARD_MODEL, dataset_pairs, has_dataset_pairs, pinned_datasets
from training.services.jobs import enqueue_on_commit, job_type, this_worker, worker_launch_config
from training.services.memory import check_reward_training_fits
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


def labels_since(run: Run, version: RewardModelVersion | None) -> int:
    """Labels with a preference in the run's scope that `version` has not seen."""
    labels = preference_labels(run)
    return labels.filter(pk__gt=version.last_label_id).count() if version else labels.count()


def labels_since_latest_reward_model(run: Run) -> int:
    """Labels with a preference in the run's scope that its newest reward model has not seen."""
    return labels_since(run, latest_reward_model(run))


def refit_backbone(run: Run) -> RewardModelVersion | None:
    """The full version a refit of this run starts from: that of its newest reward model,
    when it was trained on the run's base model and kept its features (versions trained
    before refits existed did not: the next full retrain will)."""
    latest = latest_reward_model(run)
    backbone = latest.backbone_version if latest else None
    if backbone is None or backbone.base_model_dir != run.base_model_dir:
        return None
    return backbone if backbone.has_features else None  # from the row: web machines need not see the artifacts


def refit_every_labels(run: Run) -> int:
    """The run's refit setting; runs created before it existed follow the deployment's."""
    return int(run.reward_config.get("refit_every_labels", settings.PREFLOOP_RM_REFIT_EVERY_LABELS))


class RewardRequestRaced(RuntimeError):
    """Three tries in a row found the waiting job taken or cancelled under the request."""


class Superseded(Exception):
    """A refit whose backbone was replaced by a newer full version while it ran."""


def reward_model_trained_on(label: Label) -> str | None:
    """Why an undo is refused (the loop's undo_refusal): a label that a published reward model or
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
                               round_=None, kind: str = Job.Kind.TRAIN_REWARD) -> Job:
    """A pending reward-model job (a full retrain, or a head refit) pinned to the run's
    reward config, its seed and every label so far. IntegrityError if one of its kind is
    already waiting (see request_reward_training). A refit uses its backbone's config."""
    job = Job.objects.create(kind=kind, run=run, requested_by=requested_by, round=round_,
                             params={"reason": reason, "last_label_id": last_label_id(),
                                     "datasets": pinned_datasets(run, FOR_REWARD_MODEL),
                                     "precision": run.precision})
    job.params["config"] = {**config_to_dict(reward_training_config(run)), "seed": job.pk}
    job.save(update_fields=["params"])
    return job


def request_reward_training(
    run: Run, requested_by: AbstractBaseUser | None = None, reason: str = "manual", round_=None,
    kind: str = Job.Kind.TRAIN_REWARD,
) -> Job:
    """The run's pending reward-model job of this kind (a full retrain by default, or a
    head refit), created and queued unless one is already waiting: a request made while a
    job waits is the same request, and extends it to the labels that arrived meanwhile
    (the job has not started, so nothing it did changes). A round adopts the waiting job
    as its stage. A request made while a job runs waits its turn."""
    for _ in range(3):  # the waiting job may start, or be cancelled, between the read and the lock
        existing = Job.objects.filter(kind=kind, run=run, status=Job.Status.PENDING).first()
        if existing is None:
            try:
                with transaction.atomic():
                    job = create_reward_training_job(run, requested_by, reason, round_, kind)
                    enqueue_on_commit(job)
                return job
            except IntegrityError:  # another request created it between our check and insert
                continue
        with transaction.atomic():
            waiting = Job.objects.select_for_update().get(pk=existing.pk)
            if waiting.status != Job.Status.PENDING:
                continue  # not waiting any more: a round adopting it would wait on a job it is not part of
            waiting.params = {**waiting.params, "last_label_id": max(waiting.params["last_label_id"],
                                                                     last_label_id()),
                              "datasets": pinned_datasets(run, FOR_REWARD_MODEL)}
            if round_ is not None and waiting.round_id is None:
                waiting.round = round_
            waiting.save(update_fields=["params", "round"])
        return waiting
    raise RewardRequestRaced(f"the {kind} job of {run} kept changing while it was requested; request it again")


def reward_training_config(run: Run) -> RewardTrainingConfig:
    return config_from_dict(RewardTrainingConfig, run.reward_config)


def maybe_request_reward_training(run: Run, full_retrains: bool = True) -> Job | None:
    """The automatic trigger, after each label, with the run's `reward_auto_train_labels`
    on: a full retrain once that many labels arrived since the last full version, and
    between full retrains a head refit (seconds) once `refit_every_labels` arrived since
    the newest version. Returns the full retrain's job if one was requested, else the
    refit's. At most one automatic full request a minute per run, and no refit request
    for a minute after a refit failed, so an unreachable broker (each request then fails)
    or a refit that always fails costs one failed job a minute, not one per label.
    `full_retrains=False`: refits only (a run whose rounds train its reward model).
    Nothing for a run that needs no reward model (Run.needs_reward_model: a DPO run on
    the `direct` recipe): its threshold would train one every 32 labels that nothing reads."""
    threshold = run.reward_auto_train_labels
    if threshold <= 0 or not run.needs_reward_model:
        return None
    recent = timezone.now() - timedelta(seconds=AUTO_REQUEST_INTERVAL_SECONDS)
    latest = latest_reward_model(run)
    full = None
    if (full_retrains and labels_since(run, latest.backbone_version if latest else None) >= threshold
            and not Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, run=run, created_at__gte=recent).exists()):
        full = request_reward_training(run, reason=f"{threshold} new labels")
    every = refit_every_labels(run)
    if (every <= 0 or refit_backbone(run) is None or labels_since_latest_reward_model(run) < every
            or Job.objects.filter(kind=Job.Kind.REFIT_REWARD, run=run, status=Job.Status.FAILED,
                                  finished_at__gte=recent).exists()):
        return full
    refit = request_reward_training(run, reason=f"{every} new label{'s' if every > 1 else ''}",
                                    kind=Job.Kind.REFIT_REWARD)
    return full or refit


def claim_reward_training(job: Job) -> bool:
    """Start the job unless another reward-model job of its kind and run is running (then
    the caller retries later; a full retrain and a refit may run side by side). The job
    rows are locked while deciding, so two workers cannot both start."""
    with transaction.atomic():
        active = list(
            Job.objects.select_for_update()
            .filter(kind=job.kind, run_id=job.run_id, status__in=[Job.Status.PENDING, Job.Status.RUNNING])
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
    """The (chosen, rejected) pairs these labels imply, grouped by comparison. Read as
    rows, three queries whatever the count, not as model instances: every head refit
    builds all its labels' pairs, so this is the part of a refit that grows with the
    labels (docs/benchmarks.md, "Reward-model freshness")."""
    preferred = labels.filter(choice__in=PREFERENCE_CHOICES)
    rows = list(preferred.order_by("pk").values_list("comparison_id", "choice", "ranking", "strength"))
    compared = preferred.values("comparison_id")
    prompts = dict(Comparison.objects.filter(pk__in=compared).values_list("pk", "prompt__messages"))
    answers = defaultdict(list)  # comparison → (text, ended, token ids), in display order
    for comparison_id, *answer in (ComparisonItem.objects.filter(comparison_id__in=compared)
                                   .order_by("comparison_id", "position")
                                   .values_list("comparison_id", "completion__text", "completion__ended",
                                                "completion__token_ids")):
        answers[comparison_id].append(answer)
    pairs = []
    for comparison_id, choice, ranking, strength in rows:
        if comparison_id not in prompts:
            continue  # its only label was undone between the queries
        for (chosen, chosen_ended, chosen_ids), (rejected, rejected_ended, rejected_ids) in implied_pairs(
                choice, ranking, answers[comparison_id]):
            pairs.append(PreferencePair(
                comparison_id, prompts[comparison_id], chosen, rejected, strength, chosen_ended, rejected_ended,
                tuple(chosen_ids) if chosen_ids is not None else None,
                tuple(rejected_ids) if rejected_ids is not None else None,
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


@dataclass(frozen=True)
class TrainedRewardModel:
    """What a reward-model job's trainer wrote: the version's manifest and row, and the
    job's summary, are made from it."""

    result: RewardTrainingResult
    """The trainer's result (a `RefitResult` for a head refit)."""
    config: RewardTrainingConfig
    """The config it trained with (a refit's is its backbone's)."""
    datasets: list[dict]
    """Per pinned dataset, how many of its pairs it trained on (datasets.dataset_pairs)."""


def training_pairs(job: Job, labels: QuerySet[Label], seed: int) -> tuple[list[PreferencePair], list[dict]]:
    """What a reward-model job learns from: its labels' pairs, then its pinned datasets'
    (sampled with the config's seed, so a rerun draws the same ones), and per dataset how
    many pairs it used."""
    imported, datasets = dataset_pairs(job.params.get("datasets", []), seed=seed)
    return preference_pairs(labels) + imported, datasets


def reward_model_manifest(run: Run, trained: TrainedRewardModel, bound: int) -> dict:
    """What the version's folder says about itself, full retrain or refit alike."""
    return {"base_model_dir": run.base_model_dir, "config": config_to_dict(trained.config),
            "reward_mean": trained.result.reward_mean, "reward_std": trained.result.reward_std,
            "last_label_id": bound, "datasets": trained.datasets}


def reward_model_fields(run: Run, parent: RewardModelVersion | None, labels: QuerySet[Label], bound: int,
                        folder: Path, trained: TrainedRewardModel) -> dict:
    """The row fields every published version fills, full retrain or refit alike."""
    result = trained.result
    return {"run": run, "parent": parent, "base_model_dir": run.base_model_dir, "weights_dir": str(folder),
            "label_count": labels.count(), "last_label_id": bound, "train_pairs": result.train_pairs,
            "heldout_pairs": result.heldout_pairs, "heldout_accuracy": result.heldout_accuracy,
            "heldout_accuracy_imported": result.heldout_accuracy_imported,
            "reward_mean": result.reward_mean, "reward_std": result.reward_std,
            "config": config_to_dict(trained.config), "metrics": json_safe(result.history),
            "datasets": trained.datasets}


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
    launch = worker_launch_config().for_reward_model()

    def train(out_dir: Path) -> TrainedRewardModel:
        # Before anything is loaded: a training that cannot fit fails now, saying what to change.
        check_reward_training_fits(config, run.base_model_dir, precision=job.precision, processes=launch.processes)
        pairs, datasets = training_pairs(job, labels, config.seed)
        if not pairs:
            raise ValueError("there are no labels with a preference (nor dataset pairs) to train on yet")
        # A refit shares its backbone's adapter; training continues from that.
        warm_start = (Path(parent.backbone_version.weights_dir)
                      if parent and parent.base_model_dir == run.base_model_dir else None)
        result = launch.train_reward_model(
            pairs, Path(run.base_model_dir), out_dir, config, warm_start_dir=warm_start,
            on_step=lambda step, total, metrics: job.report_progress(step, total, metrics),
            normalization_samples=normalization_samples(run, pairs), precision=job.precision,
        )
        return TrainedRewardModel(result, config, datasets)

    def create_row(number: int, folder: Path, trained: TrainedRewardModel) -> RewardModelVersion:
        return RewardModelVersion.objects.create(
            number=number, **reward_model_fields(run, parent, labels, bound, folder, trained),
            heldout_accuracy_trained_head=trained.result.heldout_accuracy_trained_head,
            has_features=(folder / FEATURES_FILE).is_file(),
        )

    try:
        version, trained = publish_artifact(
            "reward_model", job, RewardModelVersion, train,
            manifest=lambda trained: reward_model_manifest(run, trained, bound), create_row=create_row,
        )
    except Exception as error:
        log.exception("reward-model job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    result = trained.result
    job.mark_succeeded({"version": version.number, "heldout_accuracy": result.heldout_accuracy,
                        "heldout_accuracy_trained_head": result.heldout_accuracy_trained_head,
                        "train_pairs": result.train_pairs, "dropped_too_long": result.dropped_too_long,
                        **launch.describe()})
    catch_up(run)
    return version


def catch_up(run: Run) -> None:
    """After a full retrain (or a refit it superseded): the labels that arrived meanwhile
    reach a refit of the new backbone now, not at the next label. Best effort: the job
    has finished whatever happens here."""
    try:
        run.refresh_from_db()
        if not run.paused:  # an automatic loop's rounds make its full retrains; refits only then
            maybe_request_reward_training(run, full_retrains=not run.auto_loop)
    except Exception:
        log.exception("could not request a refit after a reward-model job of %s", run)


@job_type(Job.Kind.REFIT_REWARD, queue="refit", claim=claim_reward_training)
def run_reward_refit_job(job: Job) -> RewardModelVersion | None:
    """The fast path (training/ml/reward_refit.py): the run's newest backbone with its
    score head refit on every label up to the job's pinned id, from cached features, in
    seconds. The backbone's config (held-out share, seed, ensemble) applies, so the
    held-out pairs are the ones the backbone never trained on."""
    run = job.run
    parent = latest_reward_model(run)
    backbone = refit_backbone(run)
    bound = job.params["last_label_id"]
    labels = preference_labels(run).filter(pk__lte=bound)

    def refit(out_dir: Path) -> TrainedRewardModel:
        if backbone is None:
            raise ValueError("there is no fully trained reward model of this run's base model to refit yet")
        config = config_from_dict(RewardTrainingConfig, backbone.config)
        pairs, datasets = training_pairs(job, labels, config.seed)
        folders = [backbone.weights_dir, *backbone.refits.order_by("number").values_list("weights_dir", flat=True)]
        result = refit_reward_head(
            pairs, Path(run.base_model_dir), Path(backbone.weights_dir),
            [Path(folder) / FEATURES_FILE for folder in folders], out_dir, config,
            normalization_samples=normalization_samples(run, pairs),
            on_step=lambda step, total, metrics: job.report_progress(step, total, metrics), precision=job.precision,
        )
        return TrainedRewardModel(result, config, datasets)

    def create_row(number: int, folder: Path, trained: TrainedRewardModel) -> RewardModelVersion:
        # In the publishing transaction: a full version published while this refit ran
        # is the backbone now, and a refit of the old one must not hide it.
        if refit_backbone(run) != backbone:
            raise Superseded(f"reward model v{latest_reward_model(run).number}, a full retrain, was published "
                             "while this refit ran; a refit of it was requested")
        return RewardModelVersion.objects.create(
            number=number, **reward_model_fields(run, parent, labels, bound, folder, trained),
            update=RewardModelVersion.Update.REFIT, backbone=backbone,
        )

    try:
        version, trained = publish_artifact(
            "reward_model", job, RewardModelVersion, refit,
            manifest=lambda trained: {**reward_model_manifest(run, trained, bound), "refit_of": backbone.number},
            create_row=create_row,
        )
    except Superseded as superseded:
        job.mark_cancelled(str(superseded))
        catch_up(run)
        return None
    except Exception as error:
        log.exception("reward-model refit job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    job.mark_succeeded({"version": version.number, "heldout_accuracy": trained.result.heldout_accuracy,
                        "train_pairs": trained.result.train_pairs, "embedded": trained.result.embedded,
                        "backbone": backbone.number})
    return version


def load_scorer(version: RewardModelVersion, precision: str | None = None,
                quantization: str | None = None) -> RewardScorer:
    """Batch scoring with a version's normalization, and its ensemble for disagreement,
    in the job's precision and frozen_quantization settings (None: auto, none)."""
    return RewardScorer.load(Path(version.base_model_dir), Path(version.weights_dir), version.reward_mean,
                             version.reward_std, precision=precision, quantization=quantization)
