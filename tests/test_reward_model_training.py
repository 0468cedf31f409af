"""Reward-model versions through the services: labels in, a published version out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from django.core.management import call_command

from labeling import services as labeling
from labeling.models import Label
from labeling.services import LabelInput
from tests.test_reward_model_ml import marker_pairs
from training import services
from training.ml.reward_features import FEATURES_FILE
from training.ml.reward_loading import ENSEMBLE_FILE
from training.models import Job, RewardModelVersion, Round
from training.services import reward_models

pytestmark = pytest.mark.django_db


def use_model(run, model_dir) -> None:
    """Point a run (and its base version) at a real model directory."""
    run.base_model_dir = run.base_version.base_model_dir = str(model_dir)
    run.base_version.save(update_fields=["base_model_dir"])
    run.save(update_fields=["base_model_dir"])


@pytest.fixture
def rm_settings(settings, tmp_path, tiny_model_dir, base_run):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    base_run.reward_config.update(learning_rate=3e-3, epochs=2, ensemble_size=2)
    base_run.reward_auto_train_labels = 0
    base_run.save()
    use_model(base_run, tiny_model_dir)
    return settings


@pytest.fixture
def marker_labels(rm_settings, people, make_comparison):
    """An annotator who always prefers the completion with the marker word."""

    def label(count: int, seed: int = 0) -> None:
        for pair in marker_pairs(count, seed=seed):
            comparison = make_comparison(texts=(pair.chosen, pair.rejected), prompt=pair.prompt[0]["content"],
                                         seed=pair.group)
            left = comparison.ordered_completions()[0].text
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a" if left == pair.chosen else "b"),
                                  require_lease=False)

    return label


def test_labels_become_pairs_ties_and_skips_left_out_rankings_expanded(people, make_comparison):
    from training.services.reward_models import preference_pairs

    kinds = {}
    for choice in ("a", "b", "tie", "both_bad", "skip"):
        comparison = make_comparison(texts=(f"{choice} 1", f"{choice} 2"))
        labeling.submit_label(people.annotator, LabelInput(comparison.pk, choice), require_lease=False)
        kinds[comparison.pk] = choice
    ranked = make_comparison(texts=("r1", "r2", "r3", "r4"))
    labeling.submit_label(people.annotator, LabelInput(ranked.pk, "ranking", ranking=[3, 1, 0, 2]), require_lease=False)

    pairs = preference_pairs(Label.objects.all())
    assert sorted(kinds[p.group] for p in pairs if p.group in kinds) == ["a", "b"]
    ranking_pairs = [p for p in pairs if p.group == ranked.pk]
    assert len(ranking_pairs) == 6  # 4·3/2, all with the comparison as their group
    shown = [c.text for c in ranked.ordered_completions()]
    assert (ranking_pairs[0].chosen, ranking_pairs[0].rejected) == (shown[3], shown[1])


def test_pairs_carry_what_the_reward_model_reads_in_a_fixed_number_of_queries(people, make_comparison,
                                                                            django_assert_max_num_queries):
    """Every head refit builds all its labels' pairs (from rows, not model instances): what
    the reward model reads of each answer comes along, and the queries do not grow."""
    from labeling.models import Completion
    from training.services.reward_models import preference_pairs

    def label_more(count: int) -> None:
        for _ in range(count):
            comparison = make_comparison(texts=("cut off here", "a whole answer"))
            left = comparison.ordered_completions()[0].text
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a" if left == "a whole answer" else "b"),
                                  require_lease=False)

    label_more(2)
    with django_assert_max_num_queries(3):
        few = preference_pairs(Label.objects.all())
    label_more(6)
    Completion.objects.filter(text="cut off here").update(ended=False, token_ids=[7, 8, 9])
    with django_assert_max_num_queries(3):
        pairs = preference_pairs(Label.objects.all())
    assert len(few) == 2 and len(pairs) == 8
    assert [pair.group for pair in pairs] == list(Label.objects.order_by("pk").values_list("comparison_id", flat=True))
    first = pairs[0]
    assert first.prompt == Label.objects.order_by("pk")[0].comparison.prompt.messages
    assert (first.chosen, first.chosen_ended, first.chosen_ids) == ("a whole answer", True, None)
    assert (first.rejected, first.rejected_ended, first.rejected_ids) == ("cut off here", False, (7, 8, 9))

@pytest.mark.slow
def test_a_job_walks_pending_running_succeeded_and_publishes_a_version(marker_labels, monkeypatch, base_run):
    marker_labels(120)
    seen_while_running = []
    report = Job.report_progress

    def spy(job, step, total, metrics=None):
        seen_while_running.append((Job.objects.get(pk=job.pk).status, step, total))
        return report(job, step, total, metrics)

    monkeypatch.setattr(Job, "report_progress", spy)
    job = services.create_reward_training_job(base_run)
    assert job.status == Job.Status.PENDING
    assert services.claim_reward_training(job)
    version = services.run_reward_training_job(job)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 1
    assert seen_while_running and all(status == "running" for status, _, _ in seen_while_running)
    assert [step for _, step, _ in seen_while_running] == sorted(step for _, step, _ in seen_while_running)
    assert job.step == job.total_steps > 0 and job.progress == 1.0
    assert any("train/loss" in m for m in job.metrics)
    assert (version.number, version.label_count, version.last_label_id) == (1, 120, Label.objects.last().pk)
    assert version.heldout_accuracy >= 0.9 and version.heldout_accuracy_trained_head is not None
    assert job.result["heldout_accuracy_trained_head"] == version.heldout_accuracy_trained_head
    assert Path(version.weights_dir).is_dir() and not list(Path(version.weights_dir).parent.glob("*.partial*"))
    assert services.labels_since_latest_reward_model(base_run) == 0
    assert job.params["config"]["learning_rate"] == 3e-3 and version.config["epochs"] == 2  # the run's config

    marker_labels(10, seed=5)
    assert services.labels_since_latest_reward_model(base_run) == 10
    job2 = services.create_reward_training_job(base_run)
    services.claim_reward_training(job2)
    version2 = services.run_reward_training_job(job2)
    assert (version2.number, version2.parent, version2.label_count) == (2, version, 130)


@pytest.mark.slow
def test_two_accelerate_processes_train_one_reward_model_that_ranks_the_oracles_pairs(marker_labels, rm_settings,
                                                                                     base_run):
    """PREFLOOP_TRAIN_PROCESSES=2: the reward model trains as two DDP processes under
    `accelerate launch`; the main process alone saves, measures held-out accuracy,
    normalizes and fits the ensemble; one version is published."""
    rm_settings.PREFLOOP_TRAIN_PROCESSES = 2
    base_run.reward_config.update(batch_size=4)  # per process: the global batch of 8 as in one process
    base_run.save()
    marker_labels(120)
    job = services.create_reward_training_job(base_run)
    services.claim_reward_training(job)
    version = services.run_reward_training_job(job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["processes"] == 2 and job.step == job.total_steps > 0
    assert RewardModelVersion.objects.get() == version
    assert version.heldout_accuracy >= 0.9 and version.reward_std > 0
    weights = Path(version.weights_dir)
    assert (weights / ENSEMBLE_FILE).is_file()
    assert sorted(p.name for p in weights.parent.iterdir()) == [weights.name]  # no launch folder left


@pytest.mark.parametrize("when", ["at step 2", "after its last step"])
def test_a_cancelled_training_stops_and_publishes_nothing(marker_labels, monkeypatch, rm_settings, base_run, people,
                                                         when):
    """The cancel reaches the trainer through its progress reports (the next one
    raises), or, after the last step, the publishing transaction; either way nothing is
    published and the job is recorded cancelled."""
    from training.ml.launch import LaunchConfig

    marker_labels(40)
    job = services.create_reward_training_job(base_run)
    report, train = Job.report_progress, LaunchConfig.train_reward_model

    def cancel_at_step_2(self, step, total, metrics=None):
        if step == 2:
            services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)  # as another process would
        report(self, step, total, metrics)

    def cancel_once_trained(self, *args, **kwargs):
        trained = train(self, *args, **kwargs)  # every step reported, the model written
        services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)
        return trained

    if when == "at step 2":
        monkeypatch.setattr(Job, "report_progress", cancel_at_step_2)
    else:
        monkeypatch.setattr(LaunchConfig, "train_reward_model", cancel_once_trained)
    services.claim_reward_training(job)
    assert services.run_reward_training_job(job) is None
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED, job.error
    stopped_at = 1 if when == "at step 2" else job.total_steps
    assert job.error == f"cancelled by rita; stopped at step {stopped_at} of {job.total_steps}"
    assert not RewardModelVersion.objects.exists()
    assert list((Path(rm_settings.PREFLOOP_ARTIFACT_DIR) / "reward-models").iterdir()) == []


def test_a_failed_training_publishes_nothing(marker_labels, monkeypatch, rm_settings, base_run):
    marker_labels(20)
    import training.ml.launch as launch

    def crash_after_writing(pairs, base, out_dir, config, **kwargs):
        (out_dir / "adapter_model.safetensors").parent.mkdir(parents=True)
        (out_dir / "adapter_model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("out of memory in the middle of training")

    monkeypatch.setattr(launch, "train_reward_model", crash_after_writing)
    job = services.create_reward_training_job(base_run)
    services.claim_reward_training(job)
    assert services.run_reward_training_job(job) is None
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "out of memory" in job.error
    assert not RewardModelVersion.objects.exists()
    assert list((Path(rm_settings.PREFLOOP_ARTIFACT_DIR) / "reward-models").iterdir()) == []


def test_training_without_preference_labels_fails_with_a_reason(rm_settings, base_run):
    job = services.create_reward_training_job(base_run)
    services.claim_reward_training(job)
    services.run_reward_training_job(job)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "no labels with a preference" in job.error


def test_two_triggers_make_one_job_and_a_second_training_waits_for_the_first(rm_settings, people, base_run,
                                                                             make_comparison):
    first = services.request_reward_training(base_run, requested_by=people.researcher)
    pinned = first.params["last_label_id"]
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    again = services.request_reward_training(base_run)
    assert first.pk == again.pk and Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).count() == 1
    assert again.params["last_label_id"] > pinned  # the same request, now covering the new label
    assert services.claim_reward_training(first)
    waiting = services.request_reward_training(base_run)  # a request while one runs: a new pending job
    assert waiting.pk != first.pk
    assert not services.claim_reward_training(waiting)
    other_run = services.create_run("other", base_run.base_model_dir)
    assert services.claim_reward_training(services.request_reward_training(other_run))  # runs train independently
    first.mark_succeeded({})
    assert services.claim_reward_training(waiting)


def test_automatic_trigger_after_n_new_labels(rm_settings, people, make_comparison, base_run,
                                              django_capture_on_commit_callbacks):
    base_run.reward_auto_train_labels = 3
    base_run.save()
    comparisons = [make_comparison() for _ in range(4)]
    for comparison, choice in zip(comparisons, ["a", "tie", "b"], strict=False):  # a tie has no preference
        with django_capture_on_commit_callbacks(execute=True):
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, choice), require_lease=False)
    assert not Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).exists()
    with django_capture_on_commit_callbacks(execute=True):
        labeling.submit_label(people.annotator, LabelInput(comparisons[3].pk, "a"), require_lease=False)
    job = Job.objects.get(kind=Job.Kind.TRAIN_REWARD)
    assert job.params["reason"] == "3 new labels"
    # The broker is down here, so that job failed to queue; more labels within the
    # minute do not pile up one failed job each.
    for comparison in [make_comparison() for _ in range(3)]:
        with django_capture_on_commit_callbacks(execute=True):
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    assert Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).count() == 1


@pytest.mark.slow
def test_train_reward_model_command(marker_labels, capsys):
    marker_labels(40)
    call_command("train_reward_model")
    assert "Published reward model v1" in capsys.readouterr().out
    assert RewardModelVersion.objects.get().label_count == 40


@pytest.mark.slow
def test_a_refit_embeds_only_new_answers_and_ranks_the_oracles_pairs(marker_labels, rm_settings, base_run):
    """The fast path: after a full retrain, a refit version reuses the backbone's cached
    features, runs only the new labels' answers through it, and publishes a version that
    the ordinary loader scores exactly as the refit head says; the next full retrain
    still publishes, and refits then start from it."""
    from training.ml.reward_features import FeatureStore
    from training.ml.reward_loading import HEAD_FILE, load_reward_model
    from training.ml.reward_scoring import score_features
    from training.services.reward_models import run_reward_refit_job

    marker_labels(120)
    full = services.run_reward_training_job(claimed(services.create_reward_training_job(base_run)))
    assert full.update == RewardModelVersion.Update.FULL and (Path(full.weights_dir) / FEATURES_FILE).is_file()
    assert full.has_features

    marker_labels(40, seed=7)
    job = claimed(services.create_reward_training_job(base_run, kind=Job.Kind.REFIT_REWARD))
    refit = run_reward_refit_job(job)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (refit.update, refit.backbone, refit.parent, refit.label_count) == ("refit", full, full, 160)
    assert job.result["embedded"] == 2 * 40  # the 40 new labels' answers; the 120 earlier ones were cached
    assert refit.train_pairs + refit.heldout_pairs == 160 and refit.heldout_pairs >= full.heldout_pairs
    assert refit.heldout_accuracy >= 0.8
    folder = Path(refit.weights_dir)
    assert (folder / HEAD_FILE).is_file() and (folder / ENSEMBLE_FILE).is_file()
    adapter = "adapter_model.safetensors"
    assert (folder / adapter).stat().st_ino == (Path(full.weights_dir) / adapter).stat().st_ino  # linked, not copied

    # Loaded like any version, it scores with the refit head, not the backbone's.
    from training.services.reward_models import preference_pairs
    pairs = preference_pairs(Label.objects.all())[-10:]
    samples = [(p.prompt, p.chosen, p.chosen_ended, p.chosen_ids) for p in pairs]
    model, tokenizer = load_reward_model(full.base_model_dir, refit.weights_dir)
    rewards, _ = score_features(model, tokenizer, samples)
    store = FeatureStore.read([Path(full.weights_dir) / FEATURES_FILE, folder / FEATURES_FILE])
    head = torch.load(folder / HEAD_FILE)
    assert torch.allclose(rewards, store.features(samples) @ head, atol=1e-4)
    assert not torch.allclose(head, store.head)
    scorer = services.load_scorer(refit)
    chosen = scorer.score([(p.prompt, p.chosen) for p in pairs])
    rejected = scorer.score([(p.prompt, p.rejected) for p in pairs])
    assert (chosen > rejected).float().mean() >= 0.9

    # A second refit embeds nothing it has seen; a full retrain publishes and becomes the backbone.
    again = run_reward_refit_job(claimed(services.create_reward_training_job(base_run, kind=Job.Kind.REFIT_REWARD)))
    assert Job.objects.get(result__version=again.number).result["embedded"] == 0 and again.backbone == full
    newer = services.run_reward_training_job(claimed(services.create_reward_training_job(base_run)))
    assert newer.update == "full" and newer.parent == again and newer.label_count == 160
    latest = run_reward_refit_job(claimed(services.create_reward_training_job(base_run, kind=Job.Kind.REFIT_REWARD)))
    assert latest.backbone == newer

    # A full version published while a refit runs wins: the refit publishes nothing, and
    # a refit of the new backbone is requested in its place for the label that came after.
    import training.services.reward_models as reward_models
    base_run.reward_auto_train_labels = 1000
    base_run.save()
    marker_labels(5, seed=9)
    refit_reward_head = reward_models.refit_reward_head
    published = {}

    def full_retrain_meanwhile(*args, **kwargs):
        published["full"] = services.run_reward_training_job(claimed(services.create_reward_training_job(base_run)))
        marker_labels(1, seed=11)  # after the full version's pinned label
        return refit_reward_head(*args, **kwargs)

    reward_models.refit_reward_head = full_retrain_meanwhile
    try:
        stale = claimed(services.create_reward_training_job(base_run, kind=Job.Kind.REFIT_REWARD))
        assert run_reward_refit_job(stale) is None
    finally:
        reward_models.refit_reward_head = refit_reward_head
    stale.refresh_from_db()
    assert stale.status == Job.Status.CANCELLED and "was published while this refit ran" in stale.error
    assert services.latest_reward_model(base_run) == published["full"]
    assert not Path(stale_folder := settings_folder(rm_settings, stale)).exists(), stale_folder
    assert Job.objects.filter(kind=Job.Kind.REFIT_REWARD, status=Job.Status.PENDING).exists()


def settings_folder(rm_settings, job: Job) -> Path:
    return Path(rm_settings.PREFLOOP_ARTIFACT_DIR) / "reward-models" / f"job{job.pk}.partial"


def test_between_full_retrains_each_new_label_triggers_a_refit(rm_settings, people, make_comparison, base_run,
                                                               django_capture_on_commit_callbacks, client, tmp_path):
    """The automatic trigger: a full retrain every `reward_auto_train_labels` labels
    counted from the last *full* version, and a refit after `refit_every_labels` labels
    once a full version exists; none without one, none with refits off."""
    base_run.reward_auto_train_labels = 3
    base_run.save()

    def label(count: int) -> None:
        for _ in range(count):
            with django_capture_on_commit_callbacks(execute=True):
                labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)

    label(2)
    assert not Job.objects.exists()  # no backbone to refit yet, and too few labels for a full retrain
    folder = tmp_path / "v1"
    folder.mkdir()
    full = RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir=base_run.base_model_dir,
                                             weights_dir=str(folder), label_count=2,
                                             last_label_id=Label.objects.last().pk)
    label(1)
    assert not Job.objects.exists()  # a version without cached features (trained before refits) is no backbone
    full.has_features = True
    full.save(update_fields=["has_features"])
    label(1)
    refit = Job.objects.get()
    assert (refit.kind, refit.params["reason"]) == (Job.Kind.REFIT_REWARD, "1 new label")
    # A refit version does not reset the count towards the next full retrain.
    RewardModelVersion.objects.create(number=2, run=base_run, base_model_dir=base_run.base_model_dir,
                                      weights_dir="/nonexistent", label_count=4, update="refit", backbone=full,
                                      last_label_id=Label.objects.last().pk)
    client.force_login(people.researcher)
    rows = [" ".join(row.split()) for row in client.get(f"/runs/{base_run.pk}/").content.decode().split("<tr>")]
    assert any(row.startswith("<td>v2</td>") and "head refit on v1's features" in row for row in rows)
    assert any(row.startswith("<td>v1</td>") and "full retrain" in row for row in rows)
    Job.objects.all().delete()
    label(2)
    kinds = sorted(Job.objects.values_list("kind", flat=True))
    assert kinds == [Job.Kind.REFIT_REWARD, Job.Kind.TRAIN_REWARD]  # 4 since the full version: both are due
    base_run.reward_config["refit_every_labels"] = 0
    base_run.save()
    Job.objects.filter(kind=Job.Kind.REFIT_REWARD).delete()
    label(1)
    assert not Job.objects.filter(kind=Job.Kind.REFIT_REWARD).exists()  # refits off

    # With the automatic loop on, its rounds make the full retrains; a label between
    # rounds asks for a refit only, however many labels wait.
    base_run.reward_config["refit_every_labels"] = 1
    base_run.auto_loop, base_run.loop_min_labels = True, 1000
    base_run.save()
    Job.objects.all().delete()
    label(3)
    assert list(Job.objects.values_list("kind", flat=True)) == [Job.Kind.REFIT_REWARD]
    assert not Round.objects.exists()
    # After a reward-model job, labels that came meanwhile get their refit at once: for an
    # automatic loop's run too, and still no full retrain.
    Job.objects.all().delete()
    reward_models.catch_up(base_run)
    assert list(Job.objects.values_list("kind", flat=True)) == [Job.Kind.REFIT_REWARD]


def claimed(job: Job) -> Job:
    assert services.claim_reward_training(job)
    return job


def test_the_run_page_keeps_full_retrains_listed_among_many_refits(base_run, people, client):
    """A refit after every label makes versions by the dozen: the page lists the newest
    five of either kind and every older full retrain, and counts the refits it left out."""
    full = None
    for number in range(1, 34):
        kind = "full" if number in (1, 12, 23) else "refit"
        version = RewardModelVersion.objects.create(
            number=number, run=base_run, base_model_dir=base_run.base_model_dir, weights_dir=f"/nonexistent/v{number}",
            label_count=number, update=kind, backbone=None if kind == "full" else full,
            config={"fit_head_after_training": True} if number in (12, 23) else {},  # v1: from before the head fit
            heldout_accuracy_trained_head=0.625 if number == 23 else None)
        full = version if kind == "full" else full
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    table = page[page.index("Made by"):page.index("</table>", page.index("Made by"))]
    listed = [int(row.split("</td>")[0].removeprefix("<td>v")) for row in table.split("<tr>")[1:]
              if row.startswith("<td>v")]
    assert listed == [33, 32, 31, 30, 29, 23, 12, 1]
    assert "and 25 older head refits, not listed" in " ".join(table.split())
    rows = {row.split("</td>")[0].removeprefix("<td>v"): row for row in table.split("<tr>")[1:]}
    assert "full retrain, head fitted on its features (trained head 0.625)" in rows["23"]
    assert "head fitted on its features</td>" in rows["12"]  # no held-out pair to compare the heads on
    assert "head fitted" not in rows["1"]
