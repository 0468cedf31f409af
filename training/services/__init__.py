"""Domain functions of the training app, by responsibility: runs, generation (comparisons
sampled from policy versions), reward models, policy updates, rounds and their stages,
evaluation, bake-offs, publishing artifacts and job dispatch. Importing this package registers
every job type (training/services/jobs.py)."""

from __future__ import annotations

from training.services.bakeoffs import (
    BakeOffError,
    advance_bakeoff,
    bakeoff_jobs,
    promote_candidate,
    run_bakeoff_here,
    start_bakeoff,
)
from training.services.datasets import (
    DatasetError,
    run_dataset_import_job,
    start_dataset_import,
    stop_using_dataset,
    use_dataset,
)
from training.services.evaluation import (
    create_evaluation_job,
    evaluation_prompts,
    lineage_versions,
    request_evaluation,
    run_evaluation_job,
)
from training.services.external_completions import ImportResult, import_external_completions
from training.services.generation import (
    create_answers_versus_job,
    create_generation_job,
    prompts_needing_samples,
    request_generation,
    run_generation_job,
)
from training.services.jobs import (
    JOB_TYPES,
    JobNotCancellable,
    announce_finished,
    cancel_job,
    enqueue_on_commit,
    run_job_now,
)
from training.services.memory import JobTooLarge, planned_peaks
from training.services.policy_updates import PolicyUpdateError, create_policy_update_job, run_policy_update_job
from training.services.reward_models import (
    claim_reward_training,
    create_reward_training_job,
    labels_since_latest_reward_model,
    load_scorer,
    maybe_request_reward_training,
    request_reward_training,
    run_reward_training_job,
)
from training.services.rounds import (
    RoundError,
    advance_round,
    react_to_new_label,
    resume_runs,
    running_round,
    start_round,
)
from training.services.runs import (
    RunError,
    RunSettings,
    branch_run,
    create_run,
    default_run,
    default_settings,
    ensure_default_run,
    latest_reward_model,
    pause_runs,
    reward_models_to_list,
    run_named,
    set_guidelines,
    settings_of,
    update_run_settings,
)

__all__ = [
    "BakeOffError",
    "bakeoff_jobs",
    "advance_bakeoff",
    "promote_candidate",
    "run_bakeoff_here",
    "start_bakeoff",
    "DatasetError",
    "run_dataset_import_job",
    "start_dataset_import",
    "stop_using_dataset",
    "use_dataset",
    "JOB_TYPES",
    "ImportResult",
    "JobNotCancellable",
    "cancel_job",
    "PolicyUpdateError",
    "JobTooLarge",
    "RoundError",
    "RunError",
    "RunSettings",
    "advance_round",
    "announce_finished",
    "branch_run",
    "claim_reward_training",
    "create_answers_versus_job",
    "create_evaluation_job",
    "create_generation_job",
    "create_policy_update_job",
    "create_reward_training_job",
    "create_run",
    "default_run",
    "default_settings",
    "enqueue_on_commit",
    "ensure_default_run",
    "evaluation_prompts",
    "import_external_completions",
    "labels_since_latest_reward_model",
    "latest_reward_model",
    "reward_models_to_list",
    "lineage_versions",
    "load_scorer",
    "maybe_request_reward_training",
    "pause_runs",
    "planned_peaks",
    "prompts_needing_samples",
    "react_to_new_label",
    "request_evaluation",
    "request_generation",
    "request_reward_training",
    "resume_runs",
    "run_evaluation_job",
    "run_generation_job",
    "run_job_now",
    "run_named",
    "run_policy_update_job",
    "run_reward_training_job",
    "running_round",
    "settings_of",
    "start_round",
    "set_guidelines",
    "update_run_settings",
]
