"""One PPO round with TRL's `trl.experimental.ppo.PPOTrainer` (trl 1.9.2): the policy is
a LoRA adapter on the base model, the reference is the base (the adapter switched off)
or a merged earlier version, the reward is a published reward model with its
normalization folded into the score head, and the value model starts as a copy of the
reward model (Ouyang et al. 2022).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from training.ml.generation import load_tokenizer, pick_device
from training.ml.progress import StepReport, report_steps
from training.ml.reward import load_reward_model
from training.ml.tokens import prompt_input_ids

CONFIG_FILE = "prefloop_ppo_config.json"

# TRL's log keys, under the names our pages and tests use.
METRIC_NAMES = {
    "objective/scores": "ppo/reward",
    "objective/rlhf_reward": "ppo/rlhf_reward",
    "objective/kl": "ppo/kl",
    "objective/entropy": "ppo/entropy",
    "objective/non_score_reward": "ppo/kl_penalty",
    "policy/clipfrac_avg": "ppo/clip_fraction",
    "policy/approxkl_avg": "ppo/approx_kl",
    "loss/policy_avg": "ppo/policy_loss",
    "loss/value_avg": "ppo/value_loss",
    "val/num_eos_tokens": "ppo/eos_count",
    "eps": "ppo/episodes_per_second",
    "episode": "ppo/episode",
}


@dataclass
class PPORoundConfig:
    """How one PPO round runs; saved with the policy version it produced."""

    batch_size: int = 8
    """Rollouts per PPO update."""
    num_mini_batches: int = 1
    """Minibatches each rollout batch is split into for the updates."""
    ppo_epochs: int = 4
    """Optimization passes over each rollout batch."""
    total_episodes: int | None = None
    """Rollouts in the round; None means one per prompt (at least one batch)."""
    response_length: int = 64
    """New tokens per rollout."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts."""
    learning_rate: float = 1e-4
    """For the LoRA adapter and the value model."""
    kl_coef: float = 0.05
    """Weight of the KL penalty to the reference policy."""
    kl_estimator: str = "k1"
    """TRL's KL estimator: k1 (plain) or k3 (lower variance)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a rollout that never ends."""
    cliprange: float = 0.2
    """PPO's policy ratio clip."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    lora_r: int = 16
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    reference: str = "initial"
    """KL reference: "initial" (the base model) or "previous" (the policy this round starts from)."""
    seed: int = 0
    """Seeds sampling and initialization."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PPOResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    episodes: int = 0
    generated_tokens: int = 0


def normalized_reward_model(base_model_dir: Path, reward_dir: Path, mean: float, std: float, device):
    """The reward model with (r - mean) / std built into its score head, so TRL's
    `get_reward` sees normalized rewards without knowing about normalization."""
    model, _ = load_reward_model(base_model_dir, reward_dir, device)
    old = model.score  # Linear(hidden, 1, bias=False) on Llama-style classifiers
    head = torch.nn.Linear(old.in_features, 1, bias=True, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight / std)
        bias = old.bias if getattr(old, "bias", None) is not None else torch.zeros(1, device=old.weight.device)
        head.bias.copy_((bias - mean) / std)
    model.score = head
    return model


def load_policy_for_training(base_model_dir: Path, adapter_dir: Path | None, config: PPORoundConfig, device):
    """(policy, peft_config for TRL): the previous adapter made trainable, or the base
    model with a new LoRA config that TRL wraps."""
    from peft import LoraConfig, PeftModel, TaskType
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).to(device)
    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True), None
    return model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                             target_modules="all-linear")


def reference_model(base_model_dir: Path, adapter_dir: Path | None, config: PPORoundConfig, device):
    """None lets TRL use the policy with its adapter switched off: the base model."""
    if config.reference == "initial" or adapter_dir is None:
        return None
    if config.reference != "previous":
        raise ValueError(f"reference must be 'initial' or 'previous', not {config.reference!r}")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().to(device).eval()


def run_ppo_round(
    base_model_dir: Path,
    policy_adapter_dir: Path | None,
    reward_model_dir: Path,
    reward_mean: float,
    reward_std: float,
    prompts: Sequence[list[dict]],
    out_dir: Path,
    config: PPORoundConfig,
    on_step: StepReport | None = None,
) -> PPOResult:
    """Train the policy for one round and write its adapter into `out_dir` (callers
    publish it by renaming). `prompts` are conversations ending with a user turn."""
    from datasets import Dataset
    from transformers import set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer


    set_seed(config.seed)
    device = pick_device()
    tokenizer = load_tokenizer(base_model_dir)  # left padding, pad distinct from EOS
    policy, peft_config = load_policy_for_training(base_model_dir, policy_adapter_dir, config, device)
    reward_model = normalized_reward_model(base_model_dir, reward_model_dir, reward_mean, reward_std, device)
    value_model = copy.deepcopy(reward_model).train()
    dataset = Dataset.from_dict({"input_ids": [prompt_input_ids(tokenizer, p) for p in prompts]})
    episodes = config.total_episodes or max(len(prompts), config.batch_size)
    work_dir = out_dir.with_name(out_dir.name + ".trainer")

    args = PPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        local_rollout_forward_batch_size=config.batch_size,
        num_mini_batches=config.num_mini_batches,
        num_ppo_epochs=config.ppo_epochs,
        total_episodes=episodes,
        response_length=config.response_length,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator,
        missing_eos_penalty=config.missing_eos_penalty,
        cliprange=config.cliprange,
        vf_coef=config.vf_coef,
        stop_token="eos",
        seed=config.seed,
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        use_cpu=device.type == "cpu",
        bf16=False,
    )
    history: list[dict] = []
    report = report_steps(history, on_step, lambda key: METRIC_NAMES.get(key, f"trl/{key}"))

    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy,
        ref_model=reference_model(base_model_dir, policy_adapter_dir, config, device),
        reward_model=reward_model, value_model=value_model, train_dataset=dataset,
        callbacks=[report], peft_config=peft_config,
    )
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.monotonic() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.policy_model.save_pretrained(out_dir)  # the LoRA adapter only
    tokenizer.save_pretrained(out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    rollouts = trainer.state.episode
    return PPOResult(history, seconds, rollouts, rollouts * config.response_length)
