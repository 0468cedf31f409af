"""Policy updates: a run's method turns its labels (or its reward model) into the next
policy version. One job kind for every method: the job pins the method, its complete
config, the version it starts from, and the inputs the method declares (which prompts,
which reward model, labels up to which id, the seed), so changing the run's settings
never changes a queued job and any version can be rebuilt from its record."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from labeling.models import Prompt
from training.ml.configs import config_to_dict
from training.ml.loading import PolicyStart
from training.ml.methods import PAIRS, PROMPTS, REWARD_MODEL, TrainingInputs, method_named
from training.ml.reward_scoring import RewardModelRef
from training.models import Job, PolicyVersion, RewardModelVersion, Round, Run, json_safe
from training.services.artifacts import publish_artifact
from training.services.datasets import FOR_METHODS, dataset_pairs, pinned_datasets
from training.services.evaluation import evaluation_prompts
from training.services.jobs import job_type, worker_launch_config
from training.services.memory import check_policy_update_fits
from training.services.reward_models import last_label_id, preference_labels, preference_pairs

log = logging.getLogger(__name__)


class PolicyUpdateError(ValueError):
    """A policy update cannot be set up; the message says what is missing."""


def update_prompts(run: Run, count: int, seed: int) -> list[Prompt]:
    """A random sample of the prompts for one update, leaving out the run's evaluation
    prompts (versions are compared on answers no method trained on)."""
    evaluation_prompts(run)  # chosen before the first update, so no version ever trains on them
    ids = list(Prompt.objects.exclude(evaluations__run=run).values_list("pk", flat=True))
    chosen = random.Random(seed).sample(ids, min(count, len(ids)))
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def create_policy_update_job(
    run: Run, start: PolicyVersion, reward_model: RewardModelVersion | None, round_: Round | None = None,
    requested_by: AbstractBaseUser | None = None, method: str | None = None, method_config: dict | None = None,
    label_bound: int | None = None, prompt_seed: int | None = None,
) -> Job:
    """A job pinned to everything it will use. The method and config are the run's
    unless given (a bake-off trains several methods from one start). Labels up to
    `label_bound` (default: every label so far) and prompts sampled with `prompt_seed`
    (default: the job's id): a bake-off passes its own, so that every candidate learns
    from the same labels and the same prompts."""
    chosen = method_named(method or run.method)
    config = chosen.config(run.method_config if method_config is None else method_config)
    if REWARD_MODEL in chosen.needs and reward_model is None:
        raise PolicyUpdateError(f"{chosen.title} needs a reward model and the run has none yet: train one first")
    datasets = pinned_datasets(run, FOR_METHODS) if PAIRS in chosen.needs else []
    if PAIRS in chosen.needs and not datasets and not preference_labels(run).exists():
        raise PolicyUpdateError(f"{chosen.title} learns from preference pairs and the run has none yet")
    job = Job.objects.create(kind=Job.Kind.POLICY_UPDATE, run=run, round=round_, requested_by=requested_by)
    inputs = {"start_version": start.number, "seed": job.pk}
    if REWARD_MODEL in chosen.needs:
        inputs["reward_model"] = reward_model.number
    if PROMPTS in chosen.needs:
        prompts = update_prompts(run, run.update_prompts, seed=job.pk if prompt_seed is None else prompt_seed)
        if not prompts:
            raise PolicyUpdateError("there are no prompts to sample from")
        inputs["prompt_ids"] = [p.pk for p in prompts]
    if PAIRS in chosen.needs:
        inputs["last_label_id"] = last_label_id() if label_bound is None else label_bound
        inputs["datasets"] = datasets
    job.params = {"method": chosen.name, "config": {**config_to_dict(config), "seed": job.pk}, "inputs": inputs,
                  **run.job_setup(), "gradient_checkpointing": run.gradient_checkpointing}
    job.save(update_fields=["params"])
    return job


def training_inputs(job: Job) -> TrainingInputs:
    """What the job pinned, loaded: the start, and the prompts, pairs and reward model
    its method declares."""
    method = method_named(job.params["method"])
    pinned = job.params["inputs"]
    start = PolicyVersion.objects.get(number=pinned["start_version"])
    inputs = TrainingInputs(PolicyStart(Path(start.base_model_dir), Path(start.adapter_dir) if start.adapter_dir
                                        else None), precision=job.precision,
                            gradient_checkpointing=job.params.get("gradient_checkpointing", "auto"),
                            sampling_engine=job.sampling_engine, frozen_quantization=job.frozen_quantization,
                            vllm_gpu_memory_utilization=settings.PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION)
    if PROMPTS in method.needs:
        by_id = Prompt.objects.in_bulk(pinned["prompt_ids"])
        inputs.prompts = [by_id[i].messages for i in pinned["prompt_ids"] if i in by_id]
    if PAIRS in method.needs:
        imported, _ = dataset_pairs(pinned.get("datasets", []), seed=pinned["seed"])
        inputs.pairs = preference_pairs(preference_labels(job.run).filter(pk__lte=pinned["last_label_id"])) + imported
    if REWARD_MODEL in method.needs:
        judge = RewardModelVersion.objects.get(number=pinned["reward_model"])
        inputs.reward_model = RewardModelRef(Path(judge.base_model_dir), Path(judge.weights_dir), judge.reward_mean,
                                             judge.reward_std, quantization=job.frozen_quantization)
    return inputs


def input_lengths(inputs: TrainingInputs) -> tuple[int, int | None]:
    """The longest chat-templated prompt the update will see (its batches pad to it),
    and the longest answer of its pairs (None without pairs), in tokens."""
    from training.ml.loading import load_tokenizer
    from training.ml.tokens import answer_input_ids, prompt_input_ids

    prompts = list(inputs.prompts) or [pair.prompt for pair in inputs.pairs]
    try:
        tokenizer = load_tokenizer(inputs.start.base_model_dir)
    except (OSError, ValueError):  # the training's own loading reports it
        return 0, None
    longest_prompt = max((len(prompt_input_ids(tokenizer, prompt)) for prompt in prompts), default=0)
    answers = [answer for pair in inputs.pairs for answer in (pair.chosen, pair.rejected)]
    longest_answer = max((len(answer_input_ids(tokenizer, answer)) for answer in answers), default=None)
    return longest_prompt, longest_answer


@job_type(Job.Kind.POLICY_UPDATE, queue="gpu")
def run_policy_update_job(job: Job) -> PolicyVersion | None:
    """Train the job's method from its start version and publish the adapter as the
    next policy version of the run (a sibling of any other child of the start)."""
    try:
        method = method_named(job.params["method"])
        config = method.config(job.params["config"])
        start = PolicyVersion.objects.get(number=job.params["inputs"]["start_version"])
        inputs = training_inputs(job)
        launch = worker_launch_config()
        # Before anything is loaded: a job that cannot fit fails now, saying what to change.
        prompt_tokens, answer_tokens = input_lengths(inputs)
        check_policy_update_fits(method.name, config, start.base_model_dir, prompt_tokens,
                                 continuing=inputs.start.adapter_dir is not None, precision=job.precision,
                                 answer_tokens=answer_tokens, prompts=len(inputs.prompts) or None,
                                 sampling_engine=job.sampling_engine, quantization=job.frozen_quantization,
                                 gradient_checkpointing=job.params.get("gradient_checkpointing"),
                                 processes=launch.processes)
        described = launch.describe()  # read now: the config file may change while this trains

        def write(out_dir: Path):
            return launch.train_method(method, inputs, out_dir, config,
                                       on_step=lambda step, total, metrics: job.report_progress(step, total, metrics))

        version, result = publish_artifact(
            "policy", job, PolicyVersion, write,
            manifest=lambda result: {"method": method.name, "config": config_to_dict(config),
                                     "base_model_dir": start.base_model_dir, "inputs": job.params["inputs"]},
            create_row=lambda number, folder, result: PolicyVersion.objects.create(
                number=number, run=job.run, parent=start, method=method.name, base_model_dir=start.base_model_dir,
                adapter_dir=str(folder), config=config_to_dict(config), inputs=job.params["inputs"], job=job,
                metrics=json_safe({"history": result.history, "seconds": result.seconds,
                                   "examples": result.examples, "summary": result.summary,
                                   "launch": described}),
            ),
        )
    except Exception as error:
        log.exception("policy-update job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    job.mark_succeeded({"policy_version": version.number, "method": method.name,
                        "reward_model": job.params["inputs"].get("reward_model"),
                        "seconds": round(result.seconds, 1), **described})
    return version

