"""The evaluation job with the real (tiny) models: each version answers the fixed
prompts once, the latest reward model scores every answer once, PPO never sees them."""

from __future__ import annotations

import pytest

from labeling.models import Prompt
from tests.test_reward_model_training import marker_labels, rm_settings  # noqa: F401 (fixtures)
from training import services
from training.models import EvaluationPrompt, EvaluationSample, Job, PolicyVersion, RewardScore
from training.services.policy_updates import update_prompts

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def run_evaluation(run) -> Job:
    job = services.run_job_now(services.create_evaluation_job(run))
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def claimed(job: Job) -> Job:
    assert services.claim_reward_training(job)
    return job


def test_every_version_answers_the_fixed_prompts_once_and_the_latest_reward_model_scores_them(
    marker_labels, rm_settings, base_run, base_policy  # noqa: F811
):
    rm_settings.PREFLOOP_EVAL_PROMPTS = 3
    rm_settings.PREFLOOP_MAX_NEW_TOKENS = 8
    marker_labels(40)  # 40 prompts, and labels for a reward model
    job = run_evaluation(base_run)
    # no reward model yet; no trained version to measure the KL of
    assert job.result == {"answered": 3, "scored": 0, "kl_measured": 0, "reward_model": None, "errors": []}
    chosen = list(EvaluationPrompt.objects.values_list("prompt_id", flat=True))
    assert len(chosen) == 3
    assert set(chosen) == set(Prompt.objects.order_by("content_hash").values_list("pk", flat=True)[:3])
    assert not set(chosen) & {p.pk for p in update_prompts(base_run, 100, seed=0)}  # held out of updates

    rm1 = services.run_reward_training_job(claimed(services.create_reward_training_job(base_run)))
    PolicyVersion.objects.create(number=1, run=base_run, parent=base_policy, base_model_dir=base_policy.base_model_dir)

    job = run_evaluation(base_run)
    # v1's answers, then all six scored
    assert job.result == {"answered": 3, "scored": 6, "kl_measured": 0, "reward_model": 1, "errors": []}
    assert job.step == job.total_steps == 4
    assert EvaluationSample.objects.filter(policy_version__number=1).count() == 3
    assert RewardScore.objects.filter(reward_model=rm1).count() == 6
    # Sampling is seeded the same for every version: v1 here is the same model as v0.
    texts = {n: sorted(EvaluationSample.objects.filter(policy_version__number=n)
                       .values_list("completion__text", flat=True)) for n in (0, 1)}
    assert texts[0] == texts[1]

    assert run_evaluation(base_run).result == {"answered": 0, "scored": 0, "kl_measured": 0, "reward_model": 1,
                                               "errors": []}


@pytest.mark.django_db
def test_a_version_that_cannot_answer_is_reported_and_the_others_still_are(rm_settings, base_run,  # noqa: F811
                                                                           base_policy, tmp_path):
    rm_settings.PREFLOOP_EVAL_PROMPTS = 2
    rm_settings.PREFLOOP_MAX_NEW_TOKENS = 4
    for i in range(8):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Evaluate me {i}"}])
    PolicyVersion.objects.create(number=1, run=base_run, parent=base_policy, base_model_dir=base_policy.base_model_dir,
                                 adapter_dir=str(tmp_path / "adapter-that-was-deleted"))
    job = run_evaluation(base_run)
    assert job.result["answered"] == 2 and job.result["kl_measured"] == 0
    assert job.error.startswith("v1 could not be loaded") and len(job.result["errors"]) == 1
    assert EvaluationSample.objects.filter(policy_version__number=0).count() == 2
    assert PolicyVersion.objects.get(number=1).kl_to_base is None


def test_a_cancelled_evaluation_stops_instead_of_going_on_to_the_next_version(rm_settings, base_run,  # noqa: F811
                                                                              base_policy, people, monkeypatch):
    """A version that cannot answer is skipped; a cancel is not that version's fault."""
    rm_settings.PREFLOOP_EVAL_PROMPTS = 2
    rm_settings.PREFLOOP_MAX_NEW_TOKENS = 4
    for i in range(8):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Evaluate me {i}"}])
    PolicyVersion.objects.create(number=1, run=base_run, parent=base_policy, base_model_dir=base_policy.base_model_dir)
    job = services.create_evaluation_job(base_run)
    report = Job.report_progress

    def cancel_at_the_first_batch(self, step, total, metrics=None):
        if step > 0:
            services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)  # as another process would
        report(self, step, total, metrics)

    import training.services.evaluation as evaluation

    load, sampled = evaluation.load_version, []

    def count_versions(version, precision=None):
        sampled.append(version.number)
        return load(version, precision)

    monkeypatch.setattr(Job, "report_progress", cancel_at_the_first_batch)
    monkeypatch.setattr(evaluation, "load_version", count_versions)
    job = services.run_job_now(job)
    assert job.status == Job.Status.CANCELLED and job.error.endswith("stopped at step 0 of 4")
    assert sampled == [0] and not EvaluationSample.objects.exists()  # v1 was not loaded to be stopped too


def test_each_trained_version_gets_its_kl_to_the_base_measured_once(rm_settings, base_run, base_policy,  # noqa: F811
                                                                     tmp_path, monkeypatch):
    """An adapter that changes nothing (LoRA's B = 0 at initialization) is at KL 0 from
    its base; one with random weights is not; a second evaluation measures nothing again.
    Each version is loaded once for its answers and its KL, and the base, which answers
    too, is their reference."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import training.services.evaluation as evaluation

    rm_settings.PREFLOOP_EVAL_PROMPTS = 2
    rm_settings.PREFLOOP_MAX_NEW_TOKENS = 6
    base_run.sampling = {"kl_samples": 3}
    base_run.save(update_fields=["sampling"])
    for i in range(8):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Evaluate me {i}"}])
    adapters = {}
    for name, scale in (("unchanged", 0.0), ("moved", 1.0)):
        # On the output layer: the tiny model's near-uniform next-token distribution
        # barely moves when only the layers inside change.
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_policy.base_model_dir),
                               LoraConfig(r=4, target_modules=["lm_head"]))
        torch.manual_seed(0)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_B" in parameter_name:
                    parameter.copy_(torch.randn_like(parameter) * scale)
        model.save_pretrained(tmp_path / name)
        adapters[name] = tmp_path / name
    unchanged = PolicyVersion.objects.create(number=1, run=base_run, parent=base_policy,
                                             base_model_dir=base_policy.base_model_dir,
                                             adapter_dir=str(adapters["unchanged"]), method="sft_chosen")
    moved = PolicyVersion.objects.create(number=2, run=base_run, parent=base_policy,
                                         base_model_dir=base_policy.base_model_dir,
                                         adapter_dir=str(adapters["moved"]), method="dpo")

    loaded = []  # (base model, adapter or None) of every model the job loaded
    load_version, load_policy = evaluation.load_version, evaluation.load_policy
    monkeypatch.setattr(evaluation, "load_version",
                        lambda v, *rest: loaded.append(v.adapter_dir or None) or load_version(v, *rest))
    monkeypatch.setattr(evaluation, "load_policy",
                        lambda *args, **kwargs: loaded.append(args[1:]) or load_policy(*args, **kwargs))
    job = run_evaluation(base_run)
    assert job.params["kl_samples"] == 3 and job.result["kl_measured"] == 2 and job.result["answered"] == 3 * 2
    # The base answered first and was kept as the reference: no second copy of it.
    assert sorted(map(str, loaded)) == sorted(["None", str(adapters["unchanged"]), str(adapters["moved"])])
    unchanged.refresh_from_db()
    moved.refresh_from_db()
    assert unchanged.kl_to_base == pytest.approx(0.0, abs=1e-4)
    assert moved.kl_to_base > 5 and moved.kl_to_base_stderr > 0  # ~10 nats per token, exactly, at one context
    base_policy.refresh_from_db()
    assert base_policy.kl_to_base is None  # a base is not measured (it is 0 by definition)
    assert run_evaluation(base_run).result["kl_measured"] == 0


@pytest.mark.django_db
def test_a_runs_own_sampling_settings_are_pinned_by_jobs_whoever_creates_them(base_run, base_policy, settings):
    settings.PREFLOOP_MAX_NEW_TOKENS, settings.PREFLOOP_EVAL_KL_SAMPLES = 96, 1
    for i in range(8):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Sample me {i}"}])
    assert services.create_evaluation_job(base_run).params["kl_samples"] == 1
    base_run.sampling = {"max_new_tokens": 12, "temperature": 0.3, "kl_samples": 0}
    base_run.save(update_fields=["sampling"])
    evaluation = services.create_evaluation_job(base_run)
    generation = services.create_generation_job(base_run, base_policy, 2, samples=2)
    for job in (evaluation, generation):
        assert (job.params["sampling"]["max_new_tokens"], job.params["sampling"]["temperature"]) == (12, 0.3)
    assert evaluation.params["kl_samples"] == 0
