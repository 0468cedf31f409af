"""Policy versions and the jobs that sample comparisons from them. Model code lives in
`training.ml`; this module decides what to load, what to store and how jobs move."""

from __future__ import annotations

import logging
import random

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Q

from labeling.models import Comparison, Completion, Prompt
from labeling.services import create_comparison
from training.ml.base_model import BaseModelError, prepare_base_model
from training.models import Job, PolicyVersion
from training.services.jobs import enqueue_on_commit

log = logging.getLogger(__name__)


def ensure_base_policy() -> PolicyVersion:
    """Policy version 0: the base model, converted from the bundled GGUF when the setting
    points at our default location and nothing is there yet."""
    model_dir = settings.PREFLOOP_BASE_MODEL_DIR
    default_dir = settings.VAR_DIR / "models" / "smollm2-135m-instruct"
    prepare_base_model(model_dir, convert_smollm2_if_missing=(model_dir == default_dir))
    policy, _ = PolicyVersion.objects.get_or_create(number=0, defaults={"base_model_dir": str(model_dir)})
    if policy.base_model_dir != str(model_dir):
        # Versions are immutable: completions already stored say they came from v0.
        if policy.completions.exists():
            raise BaseModelError(
                f"policy v0 is {policy.base_model_dir} and has completions; PREFLOOP_BASE_MODEL_DIR now says "
                f"{model_dir}. Use a fresh database (DATABASE_URL) for a different base model."
            )
        policy.base_model_dir = str(model_dir)
        policy.save(update_fields=["base_model_dir"])
    return policy


def prompts_needing_samples(policy: PolicyVersion, count: int, seed: int | None = None) -> list[Prompt]:
    """`count` prompts, those with the fewest completions from this policy first, in
    random order among equals so repeated requests spread over the prompt set. The
    evaluation prompts are never among them: the reward model that judges versions on
    them has then never been trained on a comparison of them."""
    from training.services.evaluation import evaluation_prompts

    evaluation_prompts()  # chosen (or topped up) before anything is sampled, and left out
    rng = random.Random(seed)
    prompts = list(
        Prompt.objects.filter(evaluation=None)
        .annotate(done=Count("completions", filter=Q(completions__policy_version=policy)))
        .values_list("id", "done")
    )
    rng.shuffle(prompts)
    prompts.sort(key=lambda row: row[1])  # stable: shuffled within each count
    chosen_ids = [prompt_id for prompt_id, _ in prompts[:count]]
    by_id = Prompt.objects.in_bulk(chosen_ids)
    return [by_id[i] for i in chosen_ids]


def create_generation_job(
    policy: PolicyVersion, prompt_count: int, requested_by: AbstractBaseUser | None = None, samples: int = 2
) -> Job:
    """A pending generation job. Its prompts are chosen now, so a job redelivered after a
    worker crash works on the same ones."""
    prompts = prompts_needing_samples(policy, prompt_count)
    return Job.objects.create(
        kind=Job.Kind.GENERATE,
        params={"policy_version": policy.number, "prompt_ids": [p.pk for p in prompts], "samples": samples},
        total_steps=len(prompts),
        requested_by=requested_by,
    )


def request_generation(
    policy: PolicyVersion, prompt_count: int, requested_by: AbstractBaseUser | None = None, samples: int = 2
) -> Job:
    """Create a generation job and send it to the `gpu` queue once committed."""
    from training.tasks import generate_comparisons

    with transaction.atomic():
        job = create_generation_job(policy, prompt_count, requested_by, samples)
        enqueue_on_commit(job, generate_comparisons)
    return job


def sampling_config(seed: int):
    from training.ml.generation import SamplingConfig

    return SamplingConfig(
        max_new_tokens=settings.PREFLOOP_MAX_NEW_TOKENS,
        temperature=settings.PREFLOOP_TEMPERATURE,
        batch_size=settings.PREFLOOP_GENERATION_BATCH_SIZE,
        seed=seed,
    )


def sample_completions(policy: PolicyVersion, prompts: list[Prompt], samples: int, config, on_batch=None):
    """`samples` completions of each prompt from a policy version, in prompt order."""
    from training.ml.generation import iter_sample_batches, load_policy

    model, tokenizer = load_policy(policy.base_model_dir, policy.adapter_dir or None)
    done: list = []
    for batch in iter_sample_batches(model, tokenizer, [p.messages for p in prompts], samples, config):
        done.extend(batch)
        if on_batch is not None:
            on_batch(len(done))
    return done


def query_priorities(candidates: list[tuple[Prompt, list]], selection: str, seed: int) -> list[float]:
    """Queue priority of each candidate comparison. "disagreement": how unsure the
    latest reward model's ensemble is about it (Christiano et al. 2017 query what the
    ensemble disagrees on); "random" for ablations; 0 while there is no reward model."""
    from training.services.reward_models import latest_reward_model, load_scorer

    if selection == "random":
        rng = random.Random(seed)
        return [rng.random() for _ in candidates]
    version = latest_reward_model()
    if version is None or not candidates:
        return [0.0] * len(candidates)
    scorer = load_scorer(version)
    if scorer.heads is None:
        return [0.0] * len(candidates)
    return scorer.disagreement(
        [[(prompt.messages, s.text, s.ended) for s in samples] for prompt, samples in candidates]
    )


def run_generation_job(job: Job) -> None:
    """Sample completions for the job's prompts and queue them as comparisons. With
    `versus` set (earlier version numbers), each prompt also gets a comparison of the
    new policy's first sample against each of those versions, so people measure
    progress. Priorities come from query selection; every comparison of the job is
    stored at once, in one transaction."""
    if job.status == Job.Status.RUNNING:
        log.warning("job %s was running when its worker died; starting it again", job.pk)
    job.mark_running()
    try:
        params = job.params
        policy = PolicyVersion.objects.get(number=params["policy_version"])
        versus_numbers = params.get("versus")
        if isinstance(versus_numbers, int):  # jobs queued before several versions could be named
            versus_numbers = [versus_numbers]
        versus = [PolicyVersion.objects.get(number=n) for n in versus_numbers or []]
        samples = int(params.get("samples", 2))
        # Prompts this job already covered (it committed, then its worker died) are skipped.
        done = set(Completion.objects.filter(generation_settings__job=job.pk).values_list("prompt_id", flat=True))
        by_id = Prompt.objects.in_bulk(params["prompt_ids"])
        prompts = [by_id[i] for i in params["prompt_ids"] if i in by_id and i not in done]
        config = sampling_config(seed=job.pk)
        total = len(prompts) * (1 + len(versus))
        new = sample_completions(policy, prompts, samples, config,
                                 on_batch=lambda n: job.report_progress(n, total))
        old = {}
        for index, other in enumerate(versus, start=1):
            done_before = index * len(prompts)
            old[other.number] = sample_completions(
                other, prompts, 1, config, on_batch=lambda n, start=done_before: job.report_progress(start + n, total)
            )

        source = Comparison.Source.INITIAL if policy.number == 0 else Comparison.Source.POLICY
        candidates = []  # (prompt, [(policy, sample), ...], source)
        for index, prompt in enumerate(prompts):
            candidates.append((prompt, [(policy, s) for s in new[index]], source))
            for other in versus:
                pair = [(policy, new[index][0]), (other, old[other.number][index][0])]
                candidates.append((prompt, pair, Comparison.Source.CROSS_VERSION))
        priorities = query_priorities([(p, [s for _, s in shown]) for p, shown, _ in candidates],
                                      params.get("selection", settings.PREFLOOP_QUERY_SELECTION), seed=job.pk)
        store_comparisons(job, candidates, priorities, config)
    except Exception as error:
        log.exception("generation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    job.mark_succeeded({"comparisons": len(candidates), "prompts": len(prompts)})


@transaction.atomic
def store_comparisons(job: Job, candidates, priorities: list[float], config) -> None:
    rng = random.Random(job.pk)
    rows: dict[int, Completion] = {}  # by id(sample): one shown in two comparisons is one row
    for (prompt, shown, source), priority in zip(candidates, priorities, strict=True):
        completions = []
        for policy, sample in shown:
            if id(sample) not in rows:
                rows[id(sample)] = Completion.objects.create(
                    prompt=prompt, policy_version=policy, text=sample.text, ended=sample.ended,
                    generation_settings={**config.to_dict(), "job": job.pk, "num_tokens": sample.num_tokens},
                )
            completions.append(rows[id(sample)])
        create_comparison(prompt, completions, source=source, priority=priority, rng=rng)
