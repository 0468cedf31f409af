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
from training.models import EvaluationPrompt, EvaluationSample, Job, PolicyVersion, RewardScore, Round
from training.services.generation import sample_completions, sampling_config
from training.services.jobs import enqueue_on_commit
from training.services.reward_models import latest_reward_model, load_scorer

log = logging.getLogger(__name__)

# One seed for every version's answers: differences between versions are then the
# policy's, not the dice's.
EVALUATION_SEED = 20171231
# At most this share of the prompts is held out, so a small prompt set still leaves
# most of its prompts to comparisons and PPO.
MAX_EVALUATION_SHARE = 0.25


def evaluation_prompts() -> list[Prompt]:
    """The evaluation set, held out of comparisons and PPO rollouts: PREFLOOP_EVAL_PROMPTS
    prompts (at most a quarter of all), those with the smallest content hash (an order
    that does not depend on import order and mixes categories). Chosen when first needed,
    which is the first generation, and only ever topped up as more prompts arrive, so
    versions are always compared on the same prompts."""
    chosen = [e.prompt for e in EvaluationPrompt.objects.select_related("prompt")]
    wanted = min(settings.PREFLOOP_EVAL_PROMPTS, int(Prompt.objects.count() * MAX_EVALUATION_SHARE))
    if len(chosen) >= wanted:
        return chosen
    picks = Prompt.objects.filter(evaluation=None).order_by("content_hash")[: wanted - len(chosen)]
    try:
        with transaction.atomic():
            EvaluationPrompt.objects.bulk_create(
                EvaluationPrompt(prompt=prompt, position=len(chosen) + i) for i, prompt in enumerate(picks)
            )
    except IntegrityError:  # topped up by someone else just now: use theirs
        pass
    return [e.prompt for e in EvaluationPrompt.objects.select_related("prompt")]


def create_evaluation_job(round_: Round | None = None, requested_by: AbstractBaseUser | None = None) -> Job:
    return Job.objects.create(kind=Job.Kind.EVALUATE, round=round_, requested_by=requested_by)


def request_evaluation(requested_by: AbstractBaseUser | None = None) -> Job:
    """An evaluation job sent to the `gpu` queue once committed; while one requested by
    hand still waits, asking again (a double click) is the same request."""
    from training.tasks import evaluate_policies

    with transaction.atomic():
        waiting = Job.objects.filter(kind=Job.Kind.EVALUATE, status=Job.Status.PENDING, round=None).first()
        if waiting is not None:
            return waiting
        job = create_evaluation_job(requested_by=requested_by)
        enqueue_on_commit(job, evaluate_policies)
    return job


def run_evaluation_job(job: Job) -> None:
    """Answer the evaluation prompts with every version that has not yet, then score
    every answer the latest reward model has not scored. Each version's answers are
    stored in one transaction, so a crash keeps finished versions and redoes the rest.
    A version that cannot answer (its adapter is gone, say) is reported in the job's
    error and skipped, so it does not fail every later round's evaluation."""
    job.mark_running()
    errors = []
    try:
        prompts = evaluation_prompts()
        missing = []  # (version, prompts it has not answered)
        for version in PolicyVersion.objects.all():
            has_answered = set(version.evaluation_samples.values_list("prompt_id", flat=True))
            todo = [p for p in prompts if p.pk not in has_answered]
            if todo:
                missing.append((version, todo))
        reward_model = latest_reward_model()
        total = sum(len(todo) for _, todo in missing) + (1 if reward_model else 0)
        done = answered = 0
        job.report_progress(0, total)
        config = sampling_config(seed=EVALUATION_SEED)
        for version, todo in missing:
            try:
                answers = sample_completions(version, todo, 1, config,
                                             on_batch=lambda n, start=done: job.report_progress(start + n, total))
            except Exception as error:
                log.exception("policy v%s could not answer the evaluation prompts", version.number)
                errors.append(f"v{version.number} could not answer: {type(error).__name__}: {error}")
            else:
                answered += store_evaluation_samples(job, version, todo, [samples[0] for samples in answers], config)
            done += len(todo)
        scored = score_evaluation_samples(reward_model) if reward_model else 0
        job.report_progress(total, total)
    except Exception as error:
        log.exception("evaluation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    if errors:
        job.error = "; ".join(errors)
        job.save(update_fields=["error"])
    job.mark_succeeded({"answered": answered, "scored": scored, "errors": errors,
                        "reward_model": reward_model.number if reward_model else None})


@transaction.atomic
def store_evaluation_samples(job: Job, version: PolicyVersion, prompts: list[Prompt], samples, config) -> int:
    """Store the version's answers, except to prompts it answered meanwhile (another
    evaluation job running at the same time): theirs are kept. Returns how many."""
    PolicyVersion.objects.select_for_update().get(pk=version.pk)  # one writer per version
    answered = set(version.evaluation_samples.values_list("prompt_id", flat=True))
    stored = 0
    for prompt, sample in zip(prompts, samples, strict=True):
        if prompt.pk in answered:
            continue
        stored += 1
        completion = Completion.objects.create(
            prompt=prompt, policy_version=version, text=sample.text, ended=sample.ended,
            generation_settings={**config.to_dict(), "job": job.pk, "evaluation": True,
                                 "num_tokens": sample.num_tokens},
        )
        EvaluationSample.objects.create(policy_version=version, prompt=prompt, completion=completion)
    return stored


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
