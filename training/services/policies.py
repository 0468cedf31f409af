"""PPO jobs: train the latest policy against the latest reward model and publish the
result as the next policy version."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

from django.conf import settings

from labeling.models import Prompt
from training.ml.ppo import PPORoundConfig, run_ppo_round
from training.models import Job, PolicyVersion, RewardModelVersion
from training.services.evaluation import evaluation_prompts
from training.services.reward_models import latest_reward_model

log = logging.getLogger(__name__)


def latest_policy() -> PolicyVersion:
    return PolicyVersion.objects.order_by("-number").first()


def ppo_config(seed: int) -> PPORoundConfig:
    episodes = settings.PREFLOOP_PPO_EPISODES or None
    return PPORoundConfig(
        batch_size=settings.PREFLOOP_PPO_BATCH_SIZE,
        response_length=settings.PREFLOOP_PPO_RESPONSE_LENGTH,
        total_episodes=episodes,
        learning_rate=settings.PREFLOOP_PPO_LEARNING_RATE,
        kl_coef=settings.PREFLOOP_PPO_KL_COEF,
        reference=settings.PREFLOOP_PPO_REFERENCE,
        seed=seed,
    )


def ppo_prompts(count: int, seed: int) -> list[Prompt]:
    """A random sample of the prompt set for one round's rollouts, leaving out the
    evaluation prompts (versions are compared on answers PPO never trained on)."""
    evaluation_prompts()  # chosen before the first round, so no version ever trains on them
    ids = list(Prompt.objects.filter(evaluation=None).values_list("pk", flat=True))
    chosen = random.Random(seed).sample(ids, min(count, len(ids)))
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def create_ppo_job(round_=None, requested_by=None, reward_model: RewardModelVersion | None = None) -> Job:
    """A PPO job pinned to its inputs: the policy to start from and the reward model
    (the round's own), so a version published meanwhile does not change the round."""
    start = round_.policy_before if round_ is not None else latest_policy()
    params = {"policy_version": start.number, "reward_model": reward_model.number if reward_model else None}
    return Job.objects.create(kind=Job.Kind.PPO, round=round_, requested_by=requested_by, params=params)


def run_ppo_job(job: Job) -> PolicyVersion | None:
    """One PPO round from the latest policy against the latest reward model. The adapter
    is written aside, renamed into place, and the version row created last: a failure
    publishes nothing."""
    job.mark_running()
    partial_dir = None
    try:
        start = PolicyVersion.objects.get(number=job.params["policy_version"])
        if job.params.get("reward_model") is not None:
            reward_model = RewardModelVersion.objects.get(number=job.params["reward_model"])
        else:
            reward_model = latest_reward_model()
        if reward_model is None:
            raise ValueError("there is no reward model yet: train one before running PPO")
        if PolicyVersion.objects.filter(number=start.number + 1).exists():
            raise ValueError(f"policy v{start.number + 1} exists already; v{start.number} is not the latest")
        number = start.number + 1
        root = Path(settings.PREFLOOP_ARTIFACT_DIR) / "policies"
        final_dir, partial_dir = root / f"v{number}", root / f"v{number}.partial-job{job.pk}"
        shutil.rmtree(partial_dir, ignore_errors=True)  # left by a crashed attempt
        config = ppo_config(seed=job.pk)
        prompts = ppo_prompts(settings.PREFLOOP_PPO_PROMPTS, seed=job.pk)
        if not prompts:
            raise ValueError("there are no prompts to run PPO on")
        result = run_ppo_round(
            Path(start.base_model_dir), Path(start.adapter_dir) if start.adapter_dir else None,
            Path(reward_model.weights_dir), reward_model.reward_mean, reward_model.reward_std,
            [p.messages for p in prompts], partial_dir, config,
            on_step=lambda step, total, metrics: job.report_progress(step, total, metrics),
        )
        if final_dir.exists():
            raise FileExistsError(f"{final_dir} exists but no version row points at it; move it away")
        partial_dir.rename(final_dir)
        try:
            version = PolicyVersion.objects.create(
                number=number, parent=start, base_model_dir=start.base_model_dir, adapter_dir=str(final_dir),
                config={**config.to_dict(), "reward_model": reward_model.number, "prompts": len(prompts)},
                metrics={"history": result.history, "seconds": result.seconds, "episodes": result.episodes},
            )
        except Exception:
            shutil.rmtree(final_dir, ignore_errors=True)
            raise
    except Exception as error:
        log.exception("PPO job %s failed", job.pk)
        if partial_dir is not None:
            shutil.rmtree(partial_dir, ignore_errors=True)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return None
    job.mark_succeeded({"policy_version": number, "reward_model": reward_model.number,
                        "seconds": round(result.seconds, 1)})
    return version
