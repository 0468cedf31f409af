"""Tasks end to end: a real redis-server, a real Celery worker process, the tiny model,
and the worker writing into the test database."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from django.db import connection

from labeling import services as labeling
from labeling.models import Comparison, Prompt
from labeling.services import LabelInput, next_comparison_for
from tests.processes import running_celery_worker, running_redis, wait_for
from tests.test_reward_model_ml import marker_pairs
from training import services
from training.models import Job, PolicyVersion, RewardModelVersion, Run

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def worker_env(tiny_model_dir: Path, var_dir: Path, **extra: str) -> dict[str, str]:
    return {
        # The worker must write where the test reads: the test database file.
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "PREFLOOP_VAR_DIR": str(var_dir),
        "PREFLOOP_BASE_MODEL_DIR": str(tiny_model_dir),
        "PREFLOOP_OVERLAP_SHARE": "0",
        "PREFLOOP_TORCH_THREADS": "1",
        **extra,
    }


def wait_until_finished(job: Job, timeout: float, log_path: Path) -> Job:
    def finished():
        job.refresh_from_db()
        return job.is_finished

    wait_for(finished, timeout, f"job {job.pk}", interval=0.5)
    assert job.status == Job.Status.SUCCEEDED, f"{job.error}\n{log_path.read_text()[-3000:]}"
    return job


def label_marker_preferences(annotator, base_policy: PolicyVersion, count: int) -> None:
    """Comparisons of the base policy's run where the annotator prefers the marker word."""
    from labeling.models import Completion
    from labeling.services import create_comparison

    for pair in marker_pairs(count, seed=Prompt.objects.count()):
        prompt = Prompt.objects.create(messages=pair.prompt)
        completions = [Completion.objects.create(prompt=prompt, policy_version=base_policy, text=t)
                       for t in (pair.chosen, pair.rejected)]
        comparison = create_comparison(base_policy.run, prompt, completions, source="initial")
        left = comparison.ordered_completions()[0].text
        labeling.submit_label(annotator, LabelInput(comparison.pk, "a" if left == pair.chosen else "b"),
                              require_lease=False)


@pytest.fixture
def no_auto_training(base_run):
    """These tests start training themselves; the test process's labels must not."""
    base_run.reward_auto_train_labels = 0
    base_run.save()


@pytest.fixture
def redis(tmp_path):
    with running_redis(os.environ["REDIS_URL"], tmp_path) as process:
        yield process


def test_generation_runs_on_the_gpu_queue_worker_and_feeds_the_label_queue(redis, tmp_path, tiny_model_dir, people,
                                                                          tiny_base):
    log_path = tmp_path / "worker.log"
    for i in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Tell me fact {i}."}])

    with running_celery_worker("gpu", worker_env(tiny_model_dir, tmp_path / "var"), log_path):
        job = services.request_generation(tiny_base.run, tiny_base, prompt_count=3, requested_by=people.researcher)
        wait_until_finished(job, 120, log_path)

    assert job.celery_task_id
    assert "training.tasks.run_job" in log_path.read_text()
    assert Comparison.objects.count() == 3
    served = next_comparison_for(people.annotator)
    assert served is not None and served.prompt.text.startswith("Tell me fact")


def test_reward_model_trains_on_the_train_queue_worker(redis, tmp_path, tiny_model_dir, people, tiny_base,
                                                        no_auto_training):
    log_path = tmp_path / "worker.log"
    label_marker_preferences(people.annotator, tiny_base, 60)

    with running_celery_worker("train", worker_env(tiny_model_dir, tmp_path / "var"), log_path):
        job = services.request_reward_training(tiny_base.run, requested_by=people.researcher)
        wait_until_finished(job, 180, log_path)

    version = RewardModelVersion.objects.get()
    assert version.label_count == 60 and version.heldout_accuracy is not None
    assert version.run == tiny_base.run and version.config["learning_rate"] == 0.003
    assert Path(version.weights_dir).is_relative_to(tmp_path / "var")
    assert "training.tasks.run_job" in log_path.read_text()


def test_a_worker_killed_mid_training_publishes_nothing_and_the_job_is_retried(redis, tmp_path, tiny_model_dir,
                                                                              people, tiny_base, no_auto_training):
    """acks_late + reject_on_worker_lost: the message goes back to the queue, the job
    starts again from the last published version, and no half model is ever visible."""
    log_path = tmp_path / "worker.log"
    label_marker_preferences(people.annotator, tiny_base, 40)
    tiny_base.run.reward_config["epochs"] = 25
    tiny_base.run.save()
    env = worker_env(tiny_model_dir, tmp_path / "var")

    with running_celery_worker("train", env, log_path, pool="prefork") as worker:
        job = services.request_reward_training(tiny_base.run)

        def training_underway():
            job.refresh_from_db()
            return job.status == Job.Status.RUNNING and job.step >= 5

        wait_for(training_underway, 120, "training to get going", interval=0.2)
        children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the prefork worker has no child process to kill"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        assert not RewardModelVersion.objects.exists()
        wait_until_finished(job, 240, log_path)

    assert job.attempts == 2
    assert RewardModelVersion.objects.count() == 1
    artifacts = tmp_path / "var" / "artifacts" / "reward-models"
    assert sorted(p.name for p in artifacts.iterdir()) == ["v1"]


def test_the_nth_new_label_triggers_training_on_the_worker(redis, tmp_path, tiny_model_dir, people, tiny_base):
    """The 20th label triggers a full retrain on the `train` queue; the next label, a head
    refit on the `refit` queue that publishes a version with it."""
    tiny_base.run.reward_auto_train_labels = 20
    tiny_base.run.save()
    log_path = tmp_path / "worker.log"
    with running_celery_worker("train,refit", worker_env(tiny_model_dir, tmp_path / "var"), log_path):
        label_marker_preferences(people.annotator, tiny_base, 19)
        assert not Job.objects.exists()  # no full version yet, so nothing to refit either
        label_marker_preferences(people.annotator, tiny_base, 1)
        job = Job.objects.get(kind=Job.Kind.TRAIN_REWARD)
        assert job.params["reason"] == "20 new labels"
        wait_until_finished(job, 180, log_path)
        label_marker_preferences(people.annotator, tiny_base, 1)
        refit = Job.objects.get(kind=Job.Kind.REFIT_REWARD)
        wait_until_finished(refit, 120, log_path)
    versions = RewardModelVersion.objects.order_by("number")
    assert [(v.update, v.label_count) for v in versions] == [("full", 20), ("refit", 21)]
    assert refit.result["embedded"] == 2 and versions[1].backbone == versions[0]


def wait_for_round(round_, timeout: float, log_path: Path):
    from training.models import Round

    def finished():
        round_.refresh_from_db()
        return round_.status != Round.Status.RUNNING

    wait_for(finished, timeout, f"round {round_.number}", interval=0.5)
    assert round_.status == Round.Status.SUCCEEDED, f"{round_.error}\n{log_path.read_text()[-3000:]}"
    return round_


@pytest.mark.slow
def test_the_direct_and_offline_recipes_run_on_the_workers(redis, tmp_path, tiny_model_dir, people, tiny_base,
                                                           no_auto_training):
    """DPO then SFT on the chosen answers, no reward model anywhere: each round updates
    the policy from the run's pairs and evaluates it; only the direct recipe asks people
    about the new version."""
    from training.models import EvaluationSample

    run = tiny_base.run
    run.method, run.method_config = "dpo", {"batch_size": 4, "max_length": 128}
    run.comparison_prompts = 3
    run.save()
    label_marker_preferences(people.annotator, tiny_base, 12)
    for i in range(6):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Name a thing, number {i}."}])
    log_path = tmp_path / "worker.log"
    with running_celery_worker("gpu,train,default", worker_env(tiny_model_dir, tmp_path / "var"), log_path):
        direct = wait_for_round(services.start_round(run, "direct", requested_by=people.researcher), 240, log_path)
        # As the settings form saves: these fields only (the round moved the head meanwhile).
        Run.objects.filter(pk=run.pk).update(method="sft_chosen", method_config={"batch_size": 4, "max_length": 128})
        run.refresh_from_db()
        offline = wait_for_round(services.start_round(run, "offline", requested_by=people.researcher), 240, log_path)

    dpo_version, sft_version = direct.policy_after, offline.policy_after
    assert (dpo_version.method, dpo_version.parent, dpo_version.run) == ("dpo", tiny_base, run)
    assert (sft_version.method, sft_version.parent) == ("sft_chosen", dpo_version)  # the head moved
    assert dpo_version.inputs["last_label_id"] > 0 and "reward_model" not in dpo_version.inputs
    assert Path(dpo_version.adapter_dir, "adapter_config.json").is_file()
    assert any("dpo/loss" in step for step in dpo_version.metrics["history"])
    assert not RewardModelVersion.objects.exists()
    # Direct asked about its new version (new against new, and against the base, per
    # prompt); offline asked nobody.
    assert Comparison.objects.filter(items__completion__policy_version=dpo_version).distinct().count() == 3 * 2
    assert not Comparison.objects.filter(items__completion__policy_version=sft_version).exists()
    answered = EvaluationSample.objects.filter(policy_version__in=[dpo_version, sft_version])
    assert answered.filter(policy_version=sft_version).count() == answered.filter(
        policy_version=dpo_version).count() > 0
    run.refresh_from_db()
    assert run.head == sft_version
