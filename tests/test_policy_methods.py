"""Every policy-update method, through the job that runs it in production, on the tiny
model with a learnable oracle: it must publish a version that carries its pinned config
and its metrics, and move the policy the oracle's way.

The oracle prefers answers that contain a keyword the base policy says about half the
time (the most informative case). A reward model is trained once on the oracle's
judgements of base-policy samples; the pair methods (DPO, SFT on chosen) learn from the
same judgements stored as labels. Settings are small and learning rates high so each
method finishes in well under a minute; in one run of these settings the smallest gain in
the keyword rate was PPO's +0.15 (0.43 → 0.58), the others +0.19 to +0.38, so the +0.08
asserted here leaves room for noise while a method that did nothing, or pushed the wrong
way, fails.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from labeling import services as labeling
from labeling.models import Completion, Label, Prompt
from labeling.services import LabelInput, create_comparison
from labeling.simulation import oracle_annotator
from training import services
from training.ml.keyword_world import PROMPTS, TOKENS, build_keyword_world, keyword_rate
from training.ml.loading import ARTIFACT_FILE
from training.ml.methods import METHODS
from training.models import Job, PolicyVersion, RewardModelVersion

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

MIN_GAIN = 0.08

# Small and fast on the tiny model; learning rates far above real-model defaults.
TEST_CONFIGS = {
    "ppo": {"batch_size": 16, "response_length": TOKENS, "learning_rate": 2e-3, "total_episodes": 192},
    "rloo": {"batch_size": 16, "max_completion_length": TOKENS, "learning_rate": 1e-3},
    "grpo": {"batch_size": 16, "max_completion_length": TOKENS, "learning_rate": 1e-3},
    "online_dpo": {"prompts_per_step": 8, "max_new_tokens": TOKENS, "learning_rate": 1e-3, "epochs": 2},
    "dpo": {"batch_size": 16, "learning_rate": 1e-3, "epochs": 0.5},
    "sft_chosen": {"batch_size": 8, "learning_rate": 1e-3},
    "best_of_n": {"n": 4, "max_new_tokens": TOKENS, "learning_rate": 1e-3, "epochs": 2},
}


@pytest.fixture(scope="module")
def oracle_world(tmp_path_factory, gguf_tokenizer):
    """The steerable tiny policy, the oracle's keyword, its judgements of the policy's
    own samples, and a reward model trained on them (held-out accuracy 1.0 here)."""
    world = build_keyword_world(tmp_path_factory.mktemp("oracle-world"), gguf_tokenizer)
    assert world.rm.heldout_accuracy is None or world.rm.heldout_accuracy >= 0.8
    return SimpleNamespace(policy_dir=world.policy_dir, word=world.word, judged=world.judged, rm_dir=world.rm_dir,
                           rm=world.rm, rate_before=keyword_rate(world.word, world.policy_dir))


@pytest.fixture
def oracle_run(oracle_world, settings, tmp_path, db):
    """The world in the database: a run on the tiny policy, the prompts, the oracle's
    judgements as simulated labels on comparisons of the base's samples, and the reward
    model as the run's published version."""
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PREFLOOP_EVAL_PROMPTS = 0  # every prompt for the update; evaluation is tested elsewhere
    settings.PREFLOOP_OVERLAP_SHARE = 0.0
    run = services.create_run("oracle", str(oracle_world.policy_dir))
    run.update_prompts = len(PROMPTS)
    run.save()
    prompts = [Prompt.objects.create(messages=messages) for messages in PROMPTS]
    oracle = oracle_annotator(f"keyword:{oracle_world.word}")
    rng = random.Random(0)
    for prompt_index, chosen, rejected in oracle_world.judged:
        prompt = prompts[prompt_index]
        shown = [Completion.objects.create(prompt=prompt, policy_version=run.base_version, text=s.text,
                                           ended=s.ended, token_ids=list(s.token_ids)) for s in (chosen, rejected)]
        comparison = create_comparison(run, prompt, shown, source="initial", rng=rng)
        choice = "a" if comparison.ordered_completions()[0] == shown[0] else "b"
        labeling.submit_label(oracle, LabelInput(comparison.pk, choice), origin=Label.Origin.SIMULATED)
    reward_model = RewardModelVersion.objects.create(
        number=1, run=run, base_model_dir=run.base_model_dir, weights_dir=str(oracle_world.rm_dir),
        label_count=len(oracle_world.judged), reward_mean=oracle_world.rm.reward_mean,
        reward_std=oracle_world.rm.reward_std,
    )
    return SimpleNamespace(run=run, reward_model=reward_model)


@pytest.mark.parametrize("method", list(TEST_CONFIGS))
def test_each_method_publishes_a_version_that_moves_the_policy_the_oracles_way(method, oracle_world, oracle_run):
    run = oracle_run.run
    run.method, run.method_config = method, TEST_CONFIGS[method]
    run.save()
    job = services.create_policy_update_job(run, run.base_version, oracle_run.reward_model)
    job = services.run_job_now(job)
    assert job.status == Job.Status.SUCCEEDED, job.error

    version = PolicyVersion.objects.get(number=job.result["policy_version"])
    assert (version.run, version.parent, version.method) == (run, run.base_version, method)
    assert version.config == job.params["config"] == {**METHODS[method].config(TEST_CONFIGS[method]).__dict__,
                                                      "seed": job.pk}
    assert version.inputs == job.params["inputs"] and version.job == job
    history = version.metrics["history"]
    logged = {key for entry in history for key in entry}
    assert all(key.startswith(f"{method}/") for key in logged - {"step"})  # its own namespace
    curves = [curve.key for curve in METHODS[method].curves if curve.key in logged]
    assert curves, f"{method} logged none of its curves: {sorted(logged)}"
    assert all(math.isfinite(entry[key]) for entry in history for key in curves if key in entry)

    adapter = Path(version.adapter_dir)
    assert adapter.name == f"v{version.number}" and (adapter / "adapter_config.json").is_file()
    assert not (adapter / "ref").exists()  # no frozen reference copy published with it
    manifest = json.loads((adapter / ARTIFACT_FILE).read_text())
    assert (manifest["format_version"], manifest["kind"], manifest["method"]) == (1, "policy", method)
    assert not list(adapter.parent.glob("*.partial*"))

    after = keyword_rate(oracle_world.word, oracle_world.policy_dir, adapter)
    print(f"{method}: keyword rate {oracle_world.rate_before:.3f} -> {after:.3f} in {version.metrics['seconds']:.0f} s")
    assert after >= oracle_world.rate_before + MIN_GAIN, (method, oracle_world.rate_before, after)


def test_a_continued_version_starts_from_its_parents_adapter(oracle_world, oracle_run):
    """A version trained from a trained version continues its adapter: the child starts
    where the parent ended (SFT, the fastest method, twice)."""
    run = oracle_run.run
    run.method, run.method_config = "sft_chosen", TEST_CONFIGS["sft_chosen"]
    run.save()
    first = PolicyVersion.objects.get(number=services.run_job_now(
        services.create_policy_update_job(run, run.base_version, None)).result["policy_version"])
    job = services.run_job_now(services.create_policy_update_job(run, first, None))
    second = PolicyVersion.objects.get(number=job.result["policy_version"])
    assert second.parent == first and second.inputs["start_version"] == first.number
    # The first step of the continued run already has the parent's low loss.
    first_loss = first.metrics["history"][0]["sft_chosen/loss"]
    assert second.metrics["history"][0]["sft_chosen/loss"] < first_loss


# Half the single-process batch per process: two processes take the same optimizer steps
# on the same global batch as one process does above.
LAUNCHED_CONFIGS = {
    "sft_chosen": {**TEST_CONFIGS["sft_chosen"], "batch_size": 4},
    "rloo": {**TEST_CONFIGS["rloo"], "batch_size": 8},
    "ppo": {**TEST_CONFIGS["ppo"], "batch_size": 8},
}


@pytest.mark.parametrize("method", list(LAUNCHED_CONFIGS))
def test_two_accelerate_processes_publish_one_version_that_moves_the_policy_like_one(method, oracle_world,
                                                                                   oracle_run, settings):
    """PREFLOOP_TRAIN_PROCESSES=2: the worker runs the method under `accelerate launch`
    as two DDP processes on the CPU, follows the main process's steps, and publishes the
    one adapter it saved, which moves the policy the oracle's way as the single-process
    run does."""
    settings.PREFLOOP_TRAIN_PROCESSES = 2
    run = oracle_run.run
    run.method, run.method_config = method, LAUNCHED_CONFIGS[method]
    run.save()
    job = services.run_job_now(services.create_policy_update_job(run, run.base_version, oracle_run.reward_model))
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["processes"] == 2

    version = PolicyVersion.objects.get(run=run, parent=run.base_version)  # one version, not one per process
    assert version.metrics["launch"] == {"processes": 2}
    history = version.metrics["history"]
    assert history and all(math.isfinite(value) for entry in history for value in entry.values()
                           if isinstance(value, float))
    assert job.total_steps > 0 and job.step == job.total_steps  # the worker followed the main process
    assert len(job.metrics) == len(history)
    adapter = Path(version.adapter_dir)
    assert sorted(p.name for p in adapter.parent.iterdir()) == [adapter.name]  # no launch folder left behind

    after = keyword_rate(oracle_world.word, oracle_world.policy_dir, adapter)
    print(f"{method} x2 processes: keyword rate {oracle_world.rate_before:.3f} -> {after:.3f}")
    assert after >= oracle_world.rate_before + MIN_GAIN, (method, oracle_world.rate_before, after)


def test_a_cancelled_launch_stops_its_processes_and_publishes_nothing(oracle_run, settings, monkeypatch):
    """The worker follows the main process's steps; at the first one after the cancel it
    stops every launched process (their session) and publishes nothing."""
    import psutil
    from django.contrib.auth import get_user_model

    settings.PREFLOOP_TRAIN_PROCESSES = 2
    run = oracle_run.run
    run.method, run.method_config = "sft_chosen", LAUNCHED_CONFIGS["sft_chosen"]
    run.save()
    job = services.create_policy_update_job(run, run.base_version, None)
    researcher = get_user_model().objects.create_user("rita", is_staff=True)
    report, launched = Job.report_progress, []

    def cancel_once_training(self, step, total, metrics=None):
        if step >= 1:
            launched.extend(p for p in psutil.process_iter(["cmdline"])
                            if any(str(settings.PREFLOOP_ARTIFACT_DIR) in part for part in p.info["cmdline"] or []))
            services.cancel_job(Job.objects.get(pk=job.pk), researcher)  # as another process would
        report(self, step, total, metrics)

    monkeypatch.setattr(Job, "report_progress", cancel_once_training)
    job = services.run_job_now(job)
    assert job.status == Job.Status.CANCELLED, job.error
    assert re.fullmatch(r"cancelled by rita; stopped at step \d+ of [1-9]\d*", job.error)
    assert len(launched) >= 3  # the launcher and its two training processes were there
    assert not [p for p in launched if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not PolicyVersion.objects.filter(run=run).exclude(pk=run.base_version.pk).exists()
    assert not list((settings.PREFLOOP_ARTIFACT_DIR / "policies").glob("*"))


def test_a_failed_launch_fails_the_job_with_the_processes_log_and_publishes_nothing(oracle_run, settings):
    settings.PREFLOOP_TRAIN_PROCESSES = 2
    run = oracle_run.run
    run.method, run.method_config = "sft_chosen", LAUNCHED_CONFIGS["sft_chosen"]
    run.save()
    job = services.create_policy_update_job(run, run.base_version, None)
    PolicyVersion.objects.filter(pk=run.base_version.pk).update(base_model_dir="/nonexistent/model")
    job = services.run_job_now(job)
    assert job.status == Job.Status.FAILED
    assert "accelerate launch of sft_chosen (2 processes) exited with" in job.error and "nonexistent" in job.error
    assert not PolicyVersion.objects.filter(run=run).exclude(pk=run.base_version.pk).exists()
