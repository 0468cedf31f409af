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
    random order among equals so repeated requests spread over the prompt set."""
    rng = random.Random(seed)
    prompts = list(
        Prompt.objects.annotate(done=Count("completions", filter=Q(completions__policy_version=policy)))
        .order_by("done")
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


def run_generation_job(job: Job) -> None:
    """Carry out a generation job: sample completions for its prompts and queue them as
    comparisons, committing batch by batch so annotators can start on the first ones."""
    from training.ml.generation import SamplingConfig, chunks, iter_sample_batches, load_policy

    if job.status == Job.Status.RUNNING:
        log.warning("job %s was running when its worker died; resuming it", job.pk)
    job.mark_running()
    try:
        policy = PolicyVersion.objects.get(number=job.params["policy_version"])
        samples = int(job.params.get("samples", 2))
        # Prompts this job already covered (before a crash) are not sampled again.
        done = set(
            Completion.objects.filter(generation_settings__job=job.pk).values_list("prompt_id", flat=True)
        )
        by_id = Prompt.objects.in_bulk(job.params["prompt_ids"])
        prompts = [by_id[i] for i in job.params["prompt_ids"] if i in by_id and i not in done]
        config = SamplingConfig(
            max_new_tokens=settings.PREFLOOP_MAX_NEW_TOKENS,
            temperature=settings.PREFLOOP_TEMPERATURE,
            batch_size=settings.PREFLOOP_GENERATION_BATCH_SIZE,
            seed=job.pk,
        )
        model, tokenizer = load_policy(policy.base_model_dir, policy.adapter_dir or None)
        source = Comparison.Source.INITIAL if policy.number == 0 else Comparison.Source.POLICY
        rng = random.Random(job.pk)
        created = len(done)
        batches = iter_sample_batches(model, tokenizer, [p.messages for p in prompts], samples, config)
        for batch_prompts, batch in zip(chunks(prompts, config.batch_size), batches, strict=True):
            with transaction.atomic():
                for prompt, prompt_samples in zip(batch_prompts, batch, strict=True):
                    completions = [
                        Completion.objects.create(
                            prompt=prompt,
                            policy_version=policy,
                            text=sample.text,
                            ended=sample.ended,
                            generation_settings={**config.to_dict(), "job": job.pk, "num_tokens": sample.num_tokens},
                        )
                        for sample in prompt_samples
                    ]
                    create_comparison(prompt, completions, source=source, rng=rng)
                    created += 1
            job.report_progress(created, job.total_steps)
    except Exception as error:
        log.exception("generation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    job.mark_succeeded({"comparisons": created})
