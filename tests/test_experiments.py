"""Experiments judged by a hidden gold reward: designs, the gold judges, the summary
statistics (checked against values worked out by hand), isolation of arms from each
other and from people, and a two-arm, two-seed experiment end to end on the tiny model."""

from __future__ import annotations

import math

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from experiments import statistics
from experiments.designs import DesignError, parse_design
from experiments.driving import InlineDriver
from experiments.gold import ScriptedGold, gold_judge, simulated_judgement
from experiments.models import ArmRun, Experiment, GoldScore, RoundResult
from experiments.results import experiment_summary
from experiments.services import create_experiment, run_experiment
from labeling.models import Comparison, Label, LabeledBy, Prompt
from labeling.services import next_comparison_for, open_comparisons_for
from labeling.simulation import simulate_labels
from training.models import Job, PolicyVersion, RewardModelVersion

TINY_DESIGN = """
name = "tiny online vs offline"
kind = "online_vs_offline"
base_model_dir = "{model_dir}"
label_budget = 8
rounds = 2
seeds = [1, 2]
max_new_tokens = 8
evaluation_prompts = 4
kl_samples = 1

[gold]
oracle = "longer"
noise = 0.1

[run]
method = "ppo"
update_prompts = 8
reward_config = {{ learning_rate = 0.003, epochs = 1, ensemble_size = 2 }}
method_config = {{ batch_size = 8, response_length = 8, learning_rate = 0.002, total_episodes = 8 }}
"""


def make_prompts(count: int = 24) -> list[Prompt]:
    return [Prompt.objects.create(messages=[{"role": "user", "content": f"Experiment question {i}?"}])
            for i in range(count)]


# Statistics, by hand ---------------------------------------------------------------

def test_t_interval_matches_the_hand_computed_one():
    # [1, 2, 3]: mean 2, s = 1, s/√3 = 0.57735; t(0.975, 2) = 4.302653 → ±2.484138.
    interval = statistics.t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.low == pytest.approx(2 - 2.484138, abs=1e-5)
    assert interval.high == pytest.approx(2 + 2.484138, abs=1e-5)
    # Two seeds: t(0.975, 1) = 12.706205; [0.2, 0.4]: s = 0.141421, s/√2 = 0.1 → ±1.270620.
    two = statistics.t_interval([0.2, 0.4])
    assert (two.low, two.high) == (pytest.approx(0.3 - 1.270620, abs=1e-5), pytest.approx(0.3 + 1.270620, abs=1e-5))
    assert statistics.t_interval([5.0]).low is None  # one seed: no interval
    for df, quantile in ((1, 12.706205), (2, 4.302653), (3, 3.182446), (10, 2.228139), (30, 2.042272)):
        assert statistics.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-5)


def test_welch_difference_and_the_verdict_match_the_hand_computed_ones():
    # a = [5, 6, 7], b = [1, 2, 3]: difference 4; variances 1 and 1, so s.e. = √(2/3) =
    # 0.816497 and Welch's df = (2/3)² / ((1/3)²/2 · 2) = 4; t(0.975, 4) = 2.776445 →
    # ±2.266966.
    difference = statistics.welch_difference([5.0, 6.0, 7.0], [1.0, 2.0, 3.0])
    assert difference.mean == 4.0
    assert (difference.low, difference.high) == (pytest.approx(1.733034, abs=1e-5),
                                                 pytest.approx(6.266966, abs=1e-5))
    assert (statistics.verdict("online", [5, 6, 7], "offline", [1, 2, 3])
            == "online beat offline by 4.000 [1.733, 6.267] gold reward")
    assert statistics.verdict("online", [1, 2, 3], "offline", [5, 6, 7]).startswith(
        "offline beat online by 4.000 [1.733, 6.267]")
    # Unequal variances: a = [1, 2, 3] (var 1), b = [4, 6, 8] (var 4): difference −4,
    # s.e. = √(1/3 + 4/3) = 1.290994, df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = 2.941176,
    # t(0.975, 2.941) = 3.21890 → ±4.15549: [−8.155, 0.155] holds 0.
    wide = statistics.welch_difference([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert wide.mean == -4.0
    assert (wide.low, wide.high) == (pytest.approx(-8.1555, abs=1e-3), pytest.approx(0.1555, abs=1e-3))
    assert statistics.verdict("online", [1, 2, 3], "offline", [4, 6, 8]).startswith(
        "no difference detectable at this budget")


# Designs and gold judges -----------------------------------------------------------

def test_designs_are_checked_and_kinds_make_their_arms(tmp_path):
    design = parse_design(TINY_DESIGN.format(model_dir=tmp_path))
    assert [(arm.name, arm.schedule) for arm in design.arms()] == [("online", "online"), ("offline", "offline")]
    assert design.label_batches("online") == [4, 4] and design.label_batches("offline") == [8]
    active = parse_design(TINY_DESIGN.format(model_dir=tmp_path).replace("online_vs_offline", "active_vs_random"))
    assert [arm.settings["query_selection"] for arm in active.arms()] == ["disagreement", "random"]
    methods_text = TINY_DESIGN.format(model_dir=tmp_path).replace('"online_vs_offline"',
                                                                  '"methods"\nmethods = ["ppo", "dpo"]')
    methods = parse_design(methods_text + '\n[arms.dpo]\nmethod_config = { beta = 0.2 }\n')
    arms = methods.arms()
    assert [(a.name, a.schedule, a.settings["method"]) for a in arms] == [("ppo", "offline", "ppo"),
                                                                          ("dpo", "offline", "dpo")]
    assert arms[0].settings["method_config"]["batch_size"] == 8  # [run]'s config is PPO's
    assert arms[1].settings["method_config"] == {"beta": 0.2}  # DPO starts from its defaults
    for broken, message in (("kind = \"online_vs_offline\"", "unknown kind"), ("oracle = \"longer\"", "exactly one"),
                            ("rounds = 2", "needs 'rounds'")):
        replacement = {"unknown kind": 'kind = "bake"', "exactly one": 'oracle = "longer"\nmodel_dir = "x"',
                       "needs 'rounds'": ""}[message]
        with pytest.raises(DesignError, match=message):
            parse_design(TINY_DESIGN.format(model_dir=tmp_path).replace(broken, replacement))


def test_the_simulated_annotator_follows_gold_with_noise_decided_by_content():
    texts = ["short", "a much longer answer"]
    labels = [simulated_judgement([1.0, 5.0], texts, f"prompt {i}", 0.0, seed=1).choice for i in range(20)]
    assert set(labels) == {"b"}
    noisy = [simulated_judgement([1.0, 5.0], texts, f"prompt {i}", 0.5, seed=1).choice for i in range(2000)]
    assert 0.2 < noisy.count("a") / len(noisy) < 0.3  # half random, half of those wrong
    # Shown the other way round, the same pair gets the same preference, dice included.
    for i in range(50):
        left = simulated_judgement([1.0, 5.0], texts, f"prompt {i}", 0.5, seed=3).choice
        right = simulated_judgement([5.0, 1.0], texts[::-1], f"prompt {i}", 0.5, seed=3).choice
        assert (left == "a") == (right == "b")


def test_gold_judges_score_with_an_oracle_or_a_local_reward_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert ScriptedGold("longer").score([([], "abc", True), ([], "a", True)]) == [3.0, 1.0]
    gold_dir = tmp_path / "gold"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.save_pretrained(gold_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(gold_dir)
    judge = gold_judge(model_dir=str(gold_dir))
    answers = [([{"role": "user", "content": "Hi?"}], text, True) for text in ("hello there", "no")]
    scores = judge.score(answers)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    assert judge.score(answers) == scores  # deterministic
    with pytest.raises(ValueError, match="does not exist"):
        gold_judge(model_dir=str(tmp_path / "missing"))


# Isolation from people -------------------------------------------------------------

@pytest.mark.django_db
def test_people_are_never_served_an_experiment_arms_comparisons(make_comparison, people, base_run):
    human = make_comparison()
    arm = make_comparison()
    arm.run = type(base_run).objects.create(name="arm", base_model_dir="unused", method="ppo",
                                            labeled_by=LabeledBy.SIMULATOR)
    arm.save(update_fields=["run"])
    assert list(open_comparisons_for(people.annotator)) == [human]
    assert next_comparison_for(people.annotator) == human
    assert next_comparison_for(people.outsider) is None  # the people's one is leased; the arm's is never served
    simulate_labels("longer", 0.0, 10)  # the queue's simulated annotators skip it too
    arm.refresh_from_db()
    assert arm.label_count == 0


@pytest.mark.django_db
def test_experiment_pages_are_for_researchers_only(client, people):
    experiment = Experiment.objects.create(name="x", kind="online_vs_offline", design={}, mode="inline")
    for url in (reverse("experiments"), reverse("experiment_detail", args=[experiment.pk])):
        assert client.get(url).status_code == 302  # signed out: to the login page
        client.force_login(people.annotator)
        assert client.get(url).status_code == 403
        client.logout()


@pytest.mark.django_db
def test_run_experiment_needs_exactly_one_mode_and_celery_never_falls_back(tmp_path):
    design_file = tmp_path / "design.toml"
    design_file.write_text(TINY_DESIGN.format(model_dir=tmp_path))
    with pytest.raises(CommandError):
        call_command("run_experiment", str(design_file))
    with pytest.raises(CommandError):
        call_command("run_experiment", str(design_file), "--inline", "--celery")
    with pytest.raises(CommandError, match="needs the broker"):
        call_command("run_experiment", str(design_file), "--celery")  # nothing listens on the test broker
    assert not Experiment.objects.exists() and not Job.objects.exists()


@pytest.mark.django_db
def test_an_experiment_stopped_by_sigterm_is_marked_failed_with_the_job_it_was_running(tmp_path, monkeypatch):
    import dataclasses
    import os
    import signal

    from training.services.jobs import JOB_TYPES

    make_prompts()
    design_file = tmp_path / "design.toml"
    design_file.write_text(TINY_DESIGN.format(model_dir=tmp_path))
    generation = JOB_TYPES[Job.Kind.GENERATE]

    def killed_midway(job):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, while the job works
        raise AssertionError("the signal should have stopped the job")

    monkeypatch.setitem(JOB_TYPES, Job.Kind.GENERATE, dataclasses.replace(generation, run=killed_midway))
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match="SIGTERM"):
        call_command("run_experiment", str(design_file), "--inline")
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the command puts the handler back

    experiment = Experiment.objects.get()
    assert experiment.status == Experiment.Status.FAILED and "SIGTERM" in experiment.error
    job = Job.objects.get()
    assert job.status == Job.Status.FAILED and "SIGTERM" in job.error


@pytest.mark.django_db
def test_an_experiment_holds_out_the_designs_prompt_count_and_overlaps_nothing_without_changing_settings(
        tmp_path, settings, monkeypatch):
    """The design's evaluation_prompts and no overlap reach the arm's jobs through its run,
    while the deployment's settings stay what they are."""
    from django.conf import settings as live_settings

    from training.ml.generation import Sample
    from training.models import EvaluationPrompt

    settings.PREFLOOP_EVAL_PROMPTS = 16  # of 24 prompts: the deployment's would hold out 6
    settings.PREFLOOP_OVERLAP_SHARE = 1.0  # the deployment's: every comparison overlapped
    make_prompts()
    design_file = tmp_path / "design.toml"
    design_file.write_text(TINY_DESIGN.format(model_dir=tmp_path))
    seen_by_job = []

    def sampled(policy, conversations, samples, config, on_batch=None, precision=None, engine="transformers"):
        seen_by_job.append((live_settings.PREFLOOP_EVAL_PROMPTS, live_settings.PREFLOOP_OVERLAP_SHARE))
        return [[Sample(f"answer {i}.{j}", True, 2) for j in range(samples)] for i in range(len(conversations))]

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop("the base comparisons are all this test needs")

    monkeypatch.setattr("training.services.generation.sample_completions", sampled)
    monkeypatch.setattr("experiments.services.label_comparisons", stop)
    experiment = create_experiment(parse_design(design_file.read_text()), "inline")
    with pytest.raises(Stop):
        run_experiment(experiment, InlineDriver())

    job = Job.objects.get()  # the first arm's base comparisons
    assert job.status == Job.Status.SUCCEEDED
    assert EvaluationPrompt.objects.filter(run=job.run).count() == 4
    comparisons = Comparison.objects.filter(run=job.run)
    assert comparisons.count() == len(job.params["prompt_ids"]) > 0
    assert set(comparisons.values_list("labels_needed", flat=True)) == {1}
    assert seen_by_job == [(16, 1.0)]  # the job ran under the deployment's settings
    assert (live_settings.PREFLOOP_EVAL_PROMPTS, live_settings.PREFLOOP_OVERLAP_SHARE) == (16, 1.0)


# End to end ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.django_db
def test_a_two_arm_two_seed_experiment_runs_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, settings,
                                                                         client, people):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    make_prompts()
    design = parse_design(TINY_DESIGN.format(model_dir=tiny_model_dir))
    experiment = run_experiment(create_experiment(design, "inline"), InlineDriver())
    assert experiment.status == Experiment.Status.SUCCEEDED, experiment.error

    arm_runs = list(ArmRun.objects.filter(experiment=experiment).select_related("run"))
    assert sorted((a.arm, a.seed) for a in arm_runs) == [("offline", 1), ("offline", 2), ("online", 1),
                                                          ("online", 2)]
    runs = [a.run for a in arm_runs]
    # Arms never share labels, comparisons or versions.
    for run in runs:
        assert run.labeled_by == LabeledBy.SIMULATOR
        labels = Label.objects.filter(comparison__run=run)
        assert labels.count() == design.label_budget  # equal budgets
        assert set(labels.values_list("origin", flat=True)) == {Label.Origin.SIMULATED}
        for other in runs:
            if other != run:
                assert not Comparison.objects.filter(run=run, items__completion__policy_version__run=other).exists()
    versions = PolicyVersion.objects.filter(run__in=runs)
    assert versions.count() == len(runs) * (1 + design.rounds)
    for version in versions.exclude(parent=None):
        assert version.parent.run_id == version.run_id
    # Online spreads its labels over rounds on the current policy's comparisons; offline
    # spends them all on the base policy's.
    for arm_run in arm_runs:
        labeled = Comparison.objects.filter(run=arm_run.run, label_count__gt=0)
        policies = set(labeled.values_list("items__completion__policy_version__number", flat=True))
        if arm_run.schedule == "offline":
            assert policies == {arm_run.run.base_version.number}
        else:
            assert len(policies) > 1

    # A result per arm, seed and round; gold stored here only.
    results = RoundResult.objects.filter(arm_run__experiment=experiment)
    assert results.count() == len(runs) * (1 + design.rounds)
    for result in results:
        assert math.isfinite(result.gold_reward) and result.proxy_reward is not None and result.kl is not None
        assert result.gold_scores.count() == 4
        assert result.compute_seconds > 0 or result.round_index == 0
    assert results.get(arm_run=arm_runs[0], round_index=0).kl == 0.0
    assert results.get(arm_run=arm_runs[0], round_index=design.rounds).labels == design.label_budget

    # Gold scores never reach reward-model training: every reward model's pinned labels
    # are its own run's simulated labels, and no label or comparison carries a score.
    assert GoldScore.objects.filter(result__arm_run__experiment=experiment).count() == results.count() * 4
    for reward_model in RewardModelVersion.objects.filter(run__in=runs):
        job = Job.objects.get(kind=Job.Kind.TRAIN_REWARD, result__version=reward_model.number)
        trained_on = Label.objects.filter(reward_model.run.label_scope(), pk__lte=job.params["last_label_id"])
        assert reward_model.label_count == trained_on.filter(choice__in=["a", "b", "ranking"]).count()
        assert set(trained_on.values_list("origin", flat=True)) == {Label.Origin.SIMULATED}
        assert job.params["datasets"] == []
    for label in Label.objects.all():
        assert label.strength is None and label.rationale == "" and label.ranking is None

    summary = experiment_summary(experiment)
    assert [row["arm"] for row in summary["arms"]] == ["online", "offline"]
    assert summary["verdict"]
    client.force_login(people.researcher)
    page = client.get(reverse("experiment_detail", args=[experiment.pk]))
    assert page.status_code == 200
    for text in (b"tiny online vs offline", b"chart-gold-per-round", b"chart-gold-vs-kl", b"95%",
                 summary["verdict"].encode()):
        assert text in page.content
    assert client.get(reverse("experiments")).status_code == 200
