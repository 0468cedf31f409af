"""The evaluation set is held out: chosen before anything is sampled, at most a quarter
of the prompts, never in comparisons or PPO, only ever topped up; evaluation jobs do
not store an answer twice."""

from __future__ import annotations

import pytest

from labeling.models import Prompt
from training import services
from training.ml.generation import Sample, SamplingConfig
from training.models import EvaluationPrompt, Job, PolicyVersion
from training.services.evaluation import evaluation_prompts, store_evaluation_samples
from training.services.generation import prompts_needing_samples
from training.services.policy_updates import update_prompts

pytestmark = pytest.mark.django_db


def add_prompts(count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Prompt {i}"}])


def test_the_set_is_a_quarter_at_most_held_out_and_only_topped_up(base_run, base_policy, settings):
    settings.PREFLOOP_EVAL_PROMPTS = 16
    add_prompts(20)
    sampled = prompts_needing_samples(base_run, base_policy, 100, seed=0)  # the first generation chooses the set
    held_out = set(EvaluationPrompt.objects.values_list("prompt_id", flat=True))
    assert len(held_out) == 5  # a quarter of 20, not 16
    assert len(sampled) == 15 and not held_out & {p.pk for p in sampled}
    assert not held_out & {p.pk for p in update_prompts(base_run, 100, seed=0)}

    add_prompts(60, start=20)
    topped_up = [p.pk for p in evaluation_prompts(base_run)]
    assert len(topped_up) == 16 and set(topped_up[:5]) == held_out  # the first five kept, in place
    assert list(EvaluationPrompt.objects.values_list("position", flat=True)) == list(range(16))


def test_no_set_when_turned_off_or_too_few_prompts(base_run, settings):
    add_prompts(3)
    assert evaluation_prompts(base_run) == []  # a quarter of 3 is 0: every prompt stays for training
    settings.PREFLOOP_EVAL_PROMPTS = 0
    add_prompts(100, start=3)
    assert evaluation_prompts(base_run) == []


def test_each_run_has_its_own_set_and_the_same_prompts_give_the_same_set(base_run, settings):
    settings.PREFLOOP_EVAL_PROMPTS = 4
    add_prompts(20)
    other = services.create_run("other", "unused")
    assert [p.pk for p in evaluation_prompts(base_run)] == [p.pk for p in evaluation_prompts(other)]
    assert EvaluationPrompt.objects.filter(run=base_run).count() == EvaluationPrompt.objects.filter(run=other).count()
    assert EvaluationPrompt.objects.count() == 8


def test_answers_stored_by_two_jobs_are_stored_once(base_run, base_policy, settings):
    settings.PREFLOOP_EVAL_PROMPTS = 2
    add_prompts(8)
    chosen = evaluation_prompts(base_run)
    job = Job.objects.create(kind=Job.Kind.EVALUATE, run=base_run)
    answers = [Sample(f"answer to {p.text}", True, 3) for p in chosen]
    assert store_evaluation_samples(job, base_policy, chosen, answers, SamplingConfig()) == 2
    assert store_evaluation_samples(job, base_policy, chosen, answers, SamplingConfig()) == 0  # the second job
    assert base_policy.evaluation_samples.count() == 2
    assert str(base_policy.evaluation_samples.first()).startswith("policy v0 on")


def test_evaluate_now_twice_is_one_request(people, base_run, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        first = services.request_evaluation(base_run, people.researcher)
        second = services.request_evaluation(base_run, people.researcher)
    assert first == second and Job.objects.filter(kind=Job.Kind.EVALUATE).count() == 1
    assert PolicyVersion.objects.count() == 1


def test_labels_on_evaluation_prompts_never_train_the_reward_model(base_run, people, make_comparison, settings):
    """Imported answers (or a bake-off) may put comparisons on the run's evaluation
    prompts; the reward model that judges the versions there must not learn from them."""
    from labeling import services as labeling
    from labeling.services import LabelInput
    from training.services.reward_models import preference_labels

    settings.PREFLOOP_EVAL_PROMPTS = 1
    held = make_comparison(texts=("held a", "held b"), prompt="an evaluation prompt")
    kept = make_comparison(texts=("kept a", "kept b"), prompt="a training prompt")
    add_prompts(6)
    EvaluationPrompt.objects.create(run=base_run, prompt=held.prompt, position=0)
    for comparison in (held, kept):
        labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    assert list(preference_labels(base_run).values_list("comparison_id", flat=True)) == [kept.pk]
    assert services.labels_since_latest_reward_model(base_run) == 1
