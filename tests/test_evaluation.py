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
    assert job.result == {"answered": 3, "scored": 0, "reward_model": None, "errors": []}  # no reward model yet
    chosen = list(EvaluationPrompt.objects.values_list("prompt_id", flat=True))
    assert len(chosen) == 3
    assert set(chosen) == set(Prompt.objects.order_by("content_hash").values_list("pk", flat=True)[:3])
    assert not set(chosen) & {p.pk for p in update_prompts(base_run, 100, seed=0)}  # held out of updates

    rm1 = services.run_reward_training_job(claimed(services.create_reward_training_job(base_run)))
    PolicyVersion.objects.create(number=1, run=base_run, parent=base_policy, base_model_dir=base_policy.base_model_dir)

    job = run_evaluation(base_run)
    # v1's answers, then all six scored
    assert job.result == {"answered": 3, "scored": 6, "reward_model": 1, "errors": []}
    assert job.step == job.total_steps == 4
    assert EvaluationSample.objects.filter(policy_version__number=1).count() == 3
    assert RewardScore.objects.filter(reward_model=rm1).count() == 6
    # Sampling is seeded the same for every version: v1 here is the same model as v0.
    texts = {n: sorted(EvaluationSample.objects.filter(policy_version__number=n)
                       .values_list("completion__text", flat=True)) for n in (0, 1)}
    assert texts[0] == texts[1]

    assert run_evaluation(base_run).result == {"answered": 0, "scored": 0, "reward_model": 1, "errors": []}


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
    assert job.result["answered"] == 2 and len(job.result["errors"]) == 1
    assert job.error.startswith("v1 could not answer")
    assert EvaluationSample.objects.filter(policy_version__number=0).count() == 2
