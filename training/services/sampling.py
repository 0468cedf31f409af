"""Sampling from a policy version with the run's or the deployment's sampling settings, for the jobs
that need answers (comparisons, evaluation). The model code is training/ml/generation.py."""

from __future__ import annotations

from django.conf import settings

from training.ml.engines import DEFAULT_ENGINE, sample_answers
from training.ml.generation import SamplingConfig
from training.ml.loading import load_policy
from training.models import PolicyVersion, Run


def sampling_config(seed: int, run: Run | None = None) -> SamplingConfig:
    """What a job pins when it is created (so settings changed later do not change it):
    the run's own sampling settings (Run.sampling), else the deployment's."""
    own = run.sampling if run is not None else {}
    return SamplingConfig(
        max_new_tokens=int(own.get("max_new_tokens", settings.PREFLOOP_MAX_NEW_TOKENS)),
        temperature=float(own.get("temperature", settings.PREFLOOP_TEMPERATURE)),
        batch_size=settings.PREFLOOP_GENERATION_BATCH_SIZE,
        seed=seed,
    )


def kl_samples_of(run: Run) -> int:
    """Answers per evaluation prompt for a version's KL estimate (0: none)."""
    return int(run.sampling.get("kl_samples", settings.PREFLOOP_EVAL_KL_SAMPLES))


def evaluation_prompt_count(run: Run) -> int:
    """How many prompts the run's evaluation set holds out (at most a quarter of all,
    services.evaluation): its own (an experiment's design sets it), else the deployment's
    PREFLOOP_EVAL_PROMPTS. Read from the run, like the sampling settings, so the Celery
    worker that tops the set up uses the same count as the process that chose it."""
    return int(run.sampling.get("evaluation_prompts", settings.PREFLOOP_EVAL_PROMPTS))


def load_version(policy: PolicyVersion, precision: str | None = None):
    """(model, tokenizer) of a policy version: its base with its adapter, if it has one,
    in the job's precision setting (None: auto) resolved on this worker's device."""
    return load_policy(policy.base_model_dir, policy.adapter_dir or None, precision=precision)


def sample_completions(policy: PolicyVersion, conversations: list[list[dict]], samples: int, config: SamplingConfig,
                       on_batch=None, precision: str | None = None, engine: str = DEFAULT_ENGINE,
                       loaded: tuple | None = None) -> list:
    """`samples` completions of each conversation from a policy version, in order, through
    the job's sampling engine (training/ml/engines.py). `loaded`: the version's (model,
    tokenizer) where the job holds them for more than sampling (`load_version`)."""
    return sample_answers(engine, policy.base_model_dir, policy.adapter_dir or None, conversations, samples, config,
                          precision, on_batch, loaded=loaded,
                          gpu_memory_utilization=settings.PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION)
