"""Online DPO (Guo et al. 2024) with TRL's `trl.experimental.online_dpo.OnlineDPOTrainer`:
sample two answers per prompt from the current policy, let the reward model say which is
better, and take a DPO step on that fresh pair. The reward model is ours, normalized and
scored on the tokens the policy produced (training/ml/reward_function.py).

TRL's trainer keeps a pair whose two rewards are equal and trains on it as if the first
were better; with a continuous reward model ties are rare, but with a coarse one they
add noise (seen with a 0/1 reward on the tiny test model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.ml.configs import require
from training.ml.loading import AdapterReference, add_reference_adapter
from training.ml.methods.base import (
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainerSetup,
    TrainingInputs,
    TrainingResult,
    require_adapter_fields,
)
from training.ml.methods.cli import run_cli
from training.ml.methods.sampling_trainers import train_sampling_method
from training.ml.progress import StepReport

METRIC_NAMES = {"objective/scores": "reward", "objective/scores_margin": "reward_margin", "objective/kl": "kl",
                "rewards/margins": "margin", "rewards/accuracies": "accuracy", "val/contain_eos_token": "ended_share"}


@dataclass
class OnlineDPOConfig:
    """How one online-DPO update runs; saved with the policy version it produced."""

    prompts_per_step: int = 8
    """Prompts per optimizer step (two answers are sampled for each)."""
    epochs: float = 1.0
    """Passes over the update's prompts."""
    max_new_tokens: int = 64
    """New tokens per answer."""
    temperature: float = 0.7
    """Sampling temperature of the answers."""
    learning_rate: float = 3e-5
    """For the LoRA adapter."""
    beta: float = 0.1
    """DPO's β: how far the policy may move from the reference per unit of preference."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO's logistic loss, or IPO's squared one."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the reward of an answer that never ends."""
    max_length: int = 512
    """Prompt plus answer tokens in the log-probability pass (the prompt is cut from the left)."""
    lora_r: int = 16
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """DPO's reference: the base model, or the version this update starts from."""
    seed: int = 0
    """Seeds sampling and initialization."""

    def validate(self) -> None:
        require(self.prompts_per_step >= 1 and self.epochs > 0, "prompts_per_step and epochs must be above 0")
        require(self.max_new_tokens >= 1 and self.max_length > self.max_new_tokens,
                "max_new_tokens must be at least 1 and below max_length")
        require(self.temperature > 0 and self.learning_rate > 0, "temperature and learning_rate must be above 0")
        require(self.beta > 0 and self.missing_eos_penalty >= 0, "beta must be above 0, missing_eos_penalty ≥ 0")
        require_adapter_fields(self)


def reference_model(inputs: TrainingInputs, config: OnlineDPOConfig, setup: TrainerSetup):
    """None for a new adapter: TRL switches it off for the reference (the base). A
    continued adapter TRL would deep-copy, whole model and all: the reference is the
    policy itself instead, with its adapter switched off ("initial") or its start's
    adapter loaded again beside it, frozen ("previous")."""
    if inputs.start.adapter_dir is None:
        return None
    return AdapterReference(setup.policy, add_reference_adapter(setup.policy, inputs.start, config.reference))


def train(inputs: TrainingInputs, out_dir: Path, config: OnlineDPOConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    """Online DPO's own part: its trainer (from trl.experimental), its arguments, the
    missing-EOS penalty left to TRL (it penalizes before comparing the two answers, so
    our reward function adds none), and its reference passed in (`reference_model`)."""
    from trl.experimental.online_dpo import OnlineDPOConfig as TRLConfig
    from trl.experimental.online_dpo import OnlineDPOTrainer

    return train_sampling_method(
        inputs, out_dir, config, on_step, method="online_dpo", trainer_class=OnlineDPOTrainer,
        trl_config_class=TRLConfig,
        trl_arguments=dict(
            per_device_train_batch_size=config.prompts_per_step, num_train_epochs=config.epochs,
            max_new_tokens=config.max_new_tokens, max_length=config.max_length, temperature=config.temperature,
            learning_rate=config.learning_rate, beta=config.beta, loss_type=config.loss_type,
            missing_eos_penalty=config.missing_eos_penalty,
        ),
        metric_names=METRIC_NAMES, reward_penalty=0.0,
        examples_per_step=config.prompts_per_step, examples_name="pairs_sampled",
        reference_model=lambda setup: reference_model(inputs, config, setup),
    )


METHOD = Method(
    name="online_dpo",
    title="Online DPO",
    summary="DPO on fresh pairs of the policy's own answers, judged by the reward model",
    config_class=OnlineDPOConfig,
    needs=frozenset({REWARD_MODEL, PROMPTS}),
    curves=(Curve("online_dpo/reward", "Reward-model score (normalized)"), Curve("online_dpo/loss", "DPO loss"),
            Curve("online_dpo/margin", "Implicit reward margin (chosen − rejected)")),
    trainer=train,
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
