"""The fixed evaluation set: every policy version answers the same prompts once, and the
latest reward model scores every answer, so the progress pages can show versions side by
side and give reward-model win rates without loading a model in a web request.

An evaluation job is the last stage of each round, and staff can run one at any time
(after training a newer reward model, say). It only does what is missing: answers for
versions that have none yet, scores the latest reward model has not given yet.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from labeling.models import Completion, Prompt
from training.models import EvaluationPrompt, EvaluationSample, Job, PolicyVersion, RewardScore
from training.services.generation import sample_completions, sampling_config
from training.services.jobs import enqueue_on_commit
from training.services.reward_models import latest_reward_model, load_scorer

log = logging.getLogger(__name__)

# One seed for every version's answers: differences between versions are then the
# policy's, not the dice's.
EVALUATION_SEED = 20171231


def evaluation_prompts() -> list[Prompt]:
    """The evaluation set, chosen the first time it is needed and fixed from then on:
    the PREFLOOP_EVAL_PROMPTS prompts with the smallest content hash (an order that
    does not depend on import order and mixes categories)."""
    chosen = [e.prompt for e in EvaluationPrompt.objects.select_related("prompt")]
    if chosen or settings.PREFLOOP_EVAL_PROMPTS == 0:
        return chosen
    picks = list(Prompt.objects.order_by("content_hash")[: settings.PREFLOOP_EVAL_PROMPTS])
    try:
        with transaction.atomic():
            EvaluationPrompt.objects.bulk_create(
                EvaluationPrompt(prompt=prompt, position=i) for i, prompt in enumerate(picks)
            )
    except IntegrityError:  # chosen by someone else just now: use theirs
        return [e.prompt for e in EvaluationPrompt.objects.select_related("prompt")]
    return picks


def create_evaluation_job(round_=None, requested_by: AbstractBaseUser | None = None) -> Job:
    return Job.objects.create(kind=Job.Kind.EVALUATE, round=round_, requested_by=requested_by)


def request_evaluation(requested_by: AbstractBaseUser | None = None) -> Job:
    """An evaluation job sent to the `gpu` queue once committed."""
    from training.tasks import evaluate_policies

    with transaction.atomic():
        job = create_evaluation_job(requested_by=requested_by)
        enqueue_on_commit(job, evaluate_policies)
    return job


def run_evaluation_job(job: Job) -> None:
    """Answer the evaluation prompts with every version that has not yet, then score
    every answer the latest reward model has not scored. Each version's answers are
    stored in one transaction, so a crash keeps finished versions and redoes the rest."""
    job.mark_running()
    try:
        prompts = evaluation_prompts()
        missing = []  # (version, prompts it has not answered)
        for version in PolicyVersion.objects.all():
            answered = set(version.evaluation_samples.values_list("prompt_id", flat=True))
            todo = [p for p in prompts if p.pk not in answered]
            if todo:
                missing.append((version, todo))
        reward_model = latest_reward_model()
        total = sum(len(todo) for _, todo in missing) + (1 if reward_model else 0)
        done = 0
        job.report_progress(0, total)
        config = sampling_config(seed=EVALUATION_SEED)
        for version, todo in missing:
            answers = sample_completions(version, todo, 1, config,
                                         on_batch=lambda n, start=done: job.report_progress(start + n, total))
            store_evaluation_samples(job, version, todo, [samples[0] for samples in answers], config)
            done += len(todo)
        scored = score_evaluation_samples(reward_model) if reward_model else 0
        job.report_progress(total, total)
    except Exception as error:
        log.exception("evaluation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    job.mark_succeeded({"answered": done, "scored": scored,
                        "reward_model": reward_model.number if reward_model else None})


@transaction.atomic
def store_evaluation_samples(job: Job, version: PolicyVersion, prompts: list[Prompt], samples, config) -> None:
    for prompt, sample in zip(prompts, samples, strict=True):
        completion = Completion.objects.create(
            prompt=prompt, policy_version=version, text=sample.text, ended=sample.ended,
            generation_settings={**config.to_dict(), "job": job.pk, "evaluation": True,
                                 "num_tokens": sample.num_tokens},
        )
        EvaluationSample.objects.create(policy_version=version, prompt=prompt, completion=completion)


def score_evaluation_samples(reward_model) -> int:
    """Score every evaluation answer this reward model has not scored yet."""
    unscored = list(
        EvaluationSample.objects.exclude(completion__reward_scores__reward_model=reward_model)
        .select_related("completion", "prompt")
    )
    if not unscored:
        return 0
    scorer = load_scorer(reward_model)
    scores = scorer.score([(s.prompt.messages, s.completion.text, s.completion.ended) for s in unscored])
    RewardScore.objects.bulk_create(
        [RewardScore(reward_model=reward_model, completion=s.completion, score=float(score))
         for s, score in zip(unscored, scores.tolist(), strict=True)],
        ignore_conflicts=True,  # a redelivered job scoring the same answers again
    )
    return len(unscored)
