"""Domain functions of the training app, by responsibility: generation (policy versions
and the comparisons sampled from them), reward models, and job dispatch."""

from __future__ import annotations

from training.services.generation import (
    create_generation_job,
    ensure_base_policy,
    prompts_needing_samples,
    request_generation,
    run_generation_job,
)
from training.services.jobs import enqueue_on_commit
from training.services.reward_models import (
    claim_reward_training,
    labels_since_latest_reward_model,
    latest_reward_model,
    load_scorer,
    maybe_request_reward_training,
    request_reward_training,
    run_reward_training_job,
)

__all__ = [
    "claim_reward_training",
    "create_generation_job",
    "enqueue_on_commit",
    "ensure_base_policy",
    "labels_since_latest_reward_model",
    "latest_reward_model",
    "load_scorer",
    "maybe_request_reward_training",
    "prompts_needing_samples",
    "request_generation",
    "request_reward_training",
    "run_generation_job",
    "run_reward_training_job",
]
