"""Domain functions of the training app, by responsibility: generation (policy versions
and the comparisons sampled from them), reward models, PPO, rounds, evaluation and job
dispatch."""

from __future__ import annotations

from training.services.evaluation import (
    create_evaluation_job,
    evaluation_prompts,
    request_evaluation,
    run_evaluation_job,
)
from training.services.generation import (
    create_generation_job,
    ensure_base_policy,
    prompts_needing_samples,
    request_generation,
    run_generation_job,
)
from training.services.jobs import enqueue_on_commit
from training.services.policies import create_ppo_job, latest_policy, run_ppo_job
from training.services.reward_models import (
    claim_reward_training,
    labels_since_latest_reward_model,
    latest_reward_model,
    load_scorer,
    maybe_request_reward_training,
    request_reward_training,
    run_reward_training_job,
)
from training.services.rounds import (
    RoundError,
    job_finished,
    pause_loop,
    react_to_new_label,
    resume_loop,
    running_round,
    start_round,
)

__all__ = [
    "RoundError",
    "create_ppo_job",
    "job_finished",
    "latest_policy",
    "pause_loop",
    "react_to_new_label",
    "resume_loop",
    "run_ppo_job",
    "running_round",
    "start_round",
    "claim_reward_training",
    "create_evaluation_job",
    "evaluation_prompts",
    "request_evaluation",
    "run_evaluation_job",
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
