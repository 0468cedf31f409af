"""A run's fixed evaluation set: every policy version of the run answers the same prompts
once, and the run's reward model scores every answer, so the progress pages can show
versions side by side and give reward-model win rates without loading a model in a web
request.

An evaluation job is the last stage of a round, and staff can run one at any time
(after training a newer reward model, say). It only does what is missing: answers for
versions that have none yet, scores its reward model has not given yet.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from labeling.models import Completion, Prompt
from training.ml.divergence import KLEstimate, sampled_kl
from training.ml.generation import SamplingConfig
from training.ml.loading import load_policy
from training.models import (
    EvaluationPrompt,
    EvaluationSample,
    Job,
    JobCancelled,
    PolicyVersion,
    RewardModelVersion,
    RewardScore,
    Round,
    Run,
)
from training.services.jobs import enqueue_on_commit, job_type
from training.services.reward_models import load_scorer
from training.services.runs import latest_reward_model
from training.services.sampling import (
    evaluation_prompt_count,
    kl_samples_of,
    load_version,
    sample_completions,
    sampling_config,
)

log = logging.getLogger(__name__)

# One seed for every version's answers: differences between versions are then the
# policy's, not the dice's.
EVALUATION_SEED = 20171231
# At most this share of the prompts is held out, so a small prompt set still leaves
# most of its prompts to comparisons and policy updates.
MAX_EVALUATION_SHARE = 0.25
# Each KL estimate samples and scores with the version and its base: at most this many
# per job (the newest versions unmeasured), so the first evaluation of a run from before
# KL was measured does not measure its whole history at once.
MAX_KL_PER_JOB = 8


def evaluation_prompts(run: Run) -> list[Prompt]:
    """The run's evaluation set, held out of its comparisons and policy updates:
    `evaluation_prompt_count(run)` prompts (at most a quarter of all), those with the
    smallest content hash (an order that does not depend on import order and mixes
    categories, so two runs on the same prompts hold out the same ones). Chosen when first needed, which
    is the run's first generation, and only ever topped up as more prompts arrive."""
    chosen = [e.prompt for e in EvaluationPrompt.objects.filter(run=run).select_related("prompt")]
    wanted = min(evaluation_prompt_count(run), int(Prompt.objects.count() * MAX_EVALUATION_SHARE))
    if len(chosen) >= wanted:
        return chosen
    picks = Prompt.objects.exclude(evaluations__run=run).order_by("content_hash")[: wanted - len(chosen)]
    try:
        with transaction.atomic():
            EvaluationPrompt.objects.bulk_create(
                EvaluationPrompt(run=run, prompt=prompt, position=len(chosen) + i) for i, prompt in enumerate(picks)
            )
    except IntegrityError:  # topped up by someone else just now: use theirs
        pass
    return [e.prompt for e in EvaluationPrompt.objects.filter(run=run).select_related("prompt")]


def lineage_versions(run: Run) -> list[PolicyVersion]:
    """The run's versions and, for a branch, the versions it descends from (its parent's
    base up to the version it branched from), by number."""
    versions = {v.pk: v for v in run.versions.all()}
    ancestor = run.branched_from
    while ancestor is not None:
        versions.setdefault(ancestor.pk, ancestor)
        ancestor = ancestor.parent
    if run.base_version_id:
        versions.setdefault(run.base_version_id, run.base_version)
    return sorted(versions.values(), key=lambda v: v.number)


def create_evaluation_job(run: Run, round_: Round | None = None, requested_by: AbstractBaseUser | None = None) -> Job:
    """A job pinned to its sampling settings and to the reward model that will judge."""
    judge = latest_reward_model(run)
    params = {"sampling": sampling_config(EVALUATION_SEED, run).to_dict(),
              "reward_model": judge.number if judge else None, "kl_samples": kl_samples_of(run),
              **run.job_setup()}
    return Job.objects.create(kind=Job.Kind.EVALUATE, run=run, round=round_, requested_by=requested_by,
                              params=params)


def request_evaluation(run: Run, requested_by: AbstractBaseUser | None = None) -> Job:
    """An evaluation job sent to the `gpu` queue once committed; while one requested by
    hand still waits, asking again (a double click) is the same request."""
    with transaction.atomic():
        waiting = Job.objects.filter(kind=Job.Kind.EVALUATE, run=run, status=Job.Status.PENDING, round=None).first()
        if waiting is not None:
            return waiting
        job = create_evaluation_job(run, requested_by=requested_by)
        enqueue_on_commit(job)
    return job


@job_type(Job.Kind.EVALUATE, queue="gpu")
def run_evaluation_job(job: Job) -> None:
    """Answer the evaluation prompts with every version of the run's lineage that has
    not yet, then score every answer the job's reward model has not scored. Each
    version's answers are stored in one transaction, so a crash keeps finished versions
    and redoes the rest. Each version is loaded once, for its answers and for its KL to
    its base. A version that cannot be loaded or answer (its adapter is gone, say) is
    reported in the job's error and skipped, so it does not fail every later round."""
    errors = []
    try:
        run = job.run
        prompts = evaluation_prompts(run)
        versions = lineage_versions(run)
        todos = {}  # version: the prompts it has not answered
        for version in versions:
            has_answered = set(version.evaluation_samples.values_list("prompt_id", flat=True))
            todo = [p for p in prompts if p.pk not in has_answered]
            if todo:
                todos[version] = todo
        number = job.params.get("reward_model")
        reward_model = RewardModelVersion.objects.get(number=number) if number is not None else None
        kl_samples = job.params.get("kl_samples", 0)
        newest_unmeasured = [v for v in reversed(versions) if v.kl_to_base is None and not v.is_base]
        unmeasured = {v.pk for v in newest_unmeasured[:MAX_KL_PER_JOB]} if kl_samples and prompts else set()
        total = sum(len(todo) for todo in todos.values()) + len(unmeasured) + (1 if reward_model else 0)
        done = answered = measured = 0
        job.report_progress(0, total)
        config = SamplingConfig(**job.params["sampling"])
        config_kl = {"samples_per_prompt": kl_samples, "max_new_tokens": config.max_new_tokens, "seed": config.seed}
        references = {}  # one base model in memory for every version of it
        # Each version is loaded once, for its answers and its KL both.
        for version in [v for v in versions if v in todos or v.pk in unmeasured]:
            todo, measure = todos.get(version, []), version.pk in unmeasured
            try:
                policy, tokenizer = load_version(version, job.precision)
            except Exception as error:
                log.exception("policy v%s could not be loaded", version.number)
                errors.append(f"v{version.number} could not be loaded: {type(error).__name__}: {error}")
                done += len(todo) + measure
                job.report_progress(done, total)
                continue
            if version.is_base and unmeasured:  # the base itself: the reference of the KLs to come
                references.setdefault(version.base_model_dir, policy)
            if todo:
                try:
                    answers = sample_completions(
                        version, [p.messages for p in todo], 1, config,
                        on_batch=lambda n, start=done: job.report_progress(start + n, total),
                        precision=job.precision, engine=job.sampling_engine, loaded=(policy, tokenizer))
                except JobCancelled:
                    raise  # not one version's fault: the whole job stops
                except Exception as error:
                    log.exception("policy v%s could not answer the evaluation prompts", version.number)
                    errors.append(f"v{version.number} could not answer: {type(error).__name__}: {error}")
                else:
                    answered += store_evaluation_samples(job, version, todo, [samples[0] for samples in answers],
                                                         config)
                done += len(todo)
            if measure:
                try:
                    estimate = estimate_kl_to_base(version, policy, tokenizer, [p.messages for p in prompts],
                                                   references=references, precision=job.precision, **config_kl)
                except Exception as error:
                    log.exception("the KL of policy v%s could not be estimated", version.number)
                    errors.append(f"KL of v{version.number}: {type(error).__name__}: {error}")
                else:
                    PolicyVersion.objects.filter(pk=version.pk).update(kl_to_base=estimate.mean,
                                                                       kl_to_base_stderr=estimate.stderr)
                    measured += 1
                done += 1
                job.report_progress(done, total)
            del policy  # before the next version is loaded
        scored = (score_evaluation_samples(reward_model, run, job.precision, job.frozen_quantization)
                  if reward_model else 0)
        job.report_progress(total, total)
    except Exception as error:
        log.exception("evaluation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    if errors:
        job.error = "; ".join(errors)
        job.save(update_fields=["error"])
    job.mark_succeeded({"answered": answered, "scored": scored, "kl_measured": measured, "errors": errors,
                        "reward_model": reward_model.number if reward_model else None})


def estimate_kl_to_base(version: PolicyVersion, policy, tokenizer, prompts: list[list[dict]], samples_per_prompt: int,
                        max_new_tokens: int, seed: int, references: dict | None = None,
                        precision: str | None = None) -> KLEstimate:
    """KL(version ‖ its base model) in nats per answer, from the version's own untruncated
    samples (training/ml/divergence.py). Every method's versions are measured the same
    way, whether or not the method logs a KL of its own while training (DPO, SFT and
    best-of-N do not; PPO's and GRPO's are to their own reference, per batch)."""
    references = {} if references is None else references  # by base model directory, reused by the caller
    if version.base_model_dir not in references:
        references[version.base_model_dir] = load_policy(version.base_model_dir, precision=precision)[0]
    reference = references[version.base_model_dir]
    return sampled_kl(policy, reference, tokenizer, prompts, samples_per_prompt, max_new_tokens, seed)


@transaction.atomic
def store_evaluation_samples(job: Job, version: PolicyVersion, prompts: list[Prompt], samples,
                             config: SamplingConfig) -> int:
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
            token_ids=list(sample.token_ids) if sample.token_ids is not None else None,
            generation_settings={**config.to_dict(), "job": job.pk, "evaluation": True,
                                 "num_tokens": sample.num_tokens},
        )
        EvaluationSample.objects.create(policy_version=version, prompt=prompt, completion=completion)
    return stored


def score_evaluation_samples(reward_model: RewardModelVersion, run: Run, precision: str | None = None,
                             quantization: str | None = None) -> int:
    """Score every evaluation answer of the run's lineage this reward model has not
    scored yet, with the reward model in the job's `precision` and `quantization` settings."""
    unscored = list(
        EvaluationSample.objects.filter(policy_version__in=lineage_versions(run),
                                        prompt__evaluations__run=run)
        .exclude(completion__reward_scores__reward_model=reward_model)
        .select_related("completion__prompt")
    )
    if not unscored:
        return 0
    scorer = load_scorer(reward_model, precision, quantization)
    scores = scorer.score([s.completion.scored_text for s in unscored])
    RewardScore.objects.bulk_create(
        [RewardScore(reward_model=reward_model, completion=s.completion, score=float(score))
         for s, score in zip(unscored, scores.tolist(), strict=True)],
        ignore_conflicts=True,  # a redelivered job scoring the same answers again
    )
    return len(unscored)
