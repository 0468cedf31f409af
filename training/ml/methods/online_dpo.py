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

from training.ml.configs import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_SEQUENCE,
    MAX_TEMPERATURE,
    bounded,
    require,
)
from training.ml.loading import AdapterReference, add_reference_adapter
from training.ml.methods.base import (
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainerSetup,
    TrainingInputs,
    TrainingResult,
)
from training.ml.methods.cli import run_cli
from training.ml.methods.sampling_trainers import train_sampling_method
from training.ml.progress import StepReport

METRIC_NAMES = {"objective/scores": "reward", "objective/scores_margin": "reward_margin", "objective/kl": "kl",
                "rewards/margins": "margin", "rewards/accuracies": "accuracy", "val/contain_eos_token": "ended_share"}


@dataclass
class OnlineDPOConfig:
    """How one online-DPO update runs; saved with the policy version it produced."""

    prompts_per_step: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Prompts per optimizer step (two answers are sampled for each)."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the update's prompts."""
    max_new_tokens: int = bounded(64, minimum=1, maximum=MAX_NEW_TOKENS)
    """New tokens per answer."""
    temperature: float = bounded(0.7, above=0, maximum=MAX_TEMPERATURE)
    """Sampling temperature of the answers."""
    learning_rate: float = bounded(3e-5, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter."""
    beta: float = bounded(0.1, above=0, maximum=10)
    """DPO's β: how far the policy may move from the reference per unit of preference."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO's logistic loss, or IPO's squared one."""
    missing_eos_penalty: float = bounded(1.0, minimum=0, maximum=100)
    """Subtracted from the reward of an answer that never ends."""
    max_length: int = bounded(512, minimum=16, maximum=MAX_SEQUENCE)
    """Prompt plus answer tokens in the log-probability pass (the prompt is cut from the left)."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """DPO's reference: the base model, or the version this update starts from."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds sampling and initialization."""

    def validate(self) -> None:
        """The rules joining two fields; each field's own range is on the field."""
        require(self.max_length > self.max_new_tokens, f"max_new_tokens must be below max_length ({self.max_length})",
                field="max_new_tokens")


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
