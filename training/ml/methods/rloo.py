"""RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024) with TRL's `RLOOTrainer`: sample
several answers per prompt, score them with the reward model, and push each answer's
log-probability by its reward minus the mean reward of the other answers to the same
prompt. No value model: about half of PPO's memory. The reward is our reward model,
normalized and scored on the tokens the policy produced (training/ml/reward_function.py),
with a KL penalty to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.ml.configs import require
from training.ml.methods.base import (
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainingInputs,
    TrainingResult,
    require_adapter_fields,
)
from training.ml.methods.cli import run_cli
from training.ml.methods.sampling_trainers import train_sampling_method
from training.ml.progress import StepReport

METRIC_NAMES = {"reward": "reward", "kl": "kl", "entropy": "entropy", "completions/mean_length": "length",
                "completions/clipped_ratio": "cut_off_share"}


@dataclass
class RLOOConfig:
    """How one RLOO update runs; saved with the policy version it produced."""

    num_generations: int = 4
    """Answers sampled per prompt; each is baselined by the mean reward of the others."""
    batch_size: int = 8
    """Answers per optimizer step (a multiple of num_generations)."""
    epochs: float = 1.0
    """Passes over the update's prompts."""
    max_completion_length: int = 64
    """New tokens per answer."""
    temperature: float = 0.7
    """Sampling temperature of the answers."""
    learning_rate: float = 3e-5
    """For the LoRA adapter."""
    beta: float = 0.05
    """Weight of the KL penalty to the reference policy."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the reward of an answer that never ends."""
    lora_r: int = 16
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """KL reference: the base model, or the version this update starts from."""
    seed: int = 0
    """Seeds sampling and initialization."""

    def validate(self) -> None:
        require(self.num_generations >= 2, "num_generations must be at least 2 (the baseline needs another answer)")
        require(self.batch_size >= self.num_generations and self.batch_size % self.num_generations == 0,
                "batch_size must be a multiple of num_generations")
        require(self.epochs > 0 and self.max_completion_length >= 1, "epochs and max_completion_length must be > 0")
        require(self.temperature > 0 and self.learning_rate > 0, "temperature and learning_rate must be above 0")
        require(self.beta >= 0 and self.missing_eos_penalty >= 0, "beta and missing_eos_penalty must be ≥ 0")
        require_adapter_fields(self)


def train(inputs: TrainingInputs, out_dir: Path, config: RLOOConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    """RLOO's own part: its trainer and the arguments its config maps to. Our reward
    function applies the missing-EOS penalty; the KL reference is TRL's (see
    adopt_reference)."""
    from trl import RLOOConfig as TRLConfig
    from trl import RLOOTrainer

    return train_sampling_method(
        inputs, out_dir, config, on_step, method="rloo", trainer_class=RLOOTrainer, trl_config_class=TRLConfig,
        trl_arguments=dict(
            per_device_train_batch_size=config.batch_size, num_generations=config.num_generations,
            num_train_epochs=config.epochs, max_completion_length=config.max_completion_length,
            temperature=config.temperature, learning_rate=config.learning_rate, beta=config.beta,
        ),
        metric_names=METRIC_NAMES, reward_penalty=config.missing_eos_penalty,
        examples_per_step=config.batch_size, examples_name="answers_sampled",
    )


METHOD = Method(
    name="rloo",
    title="RLOO",
    summary="REINFORCE with a leave-one-out baseline against the reward model; no value model",
    config_class=RLOOConfig,
    needs=frozenset({REWARD_MODEL, PROMPTS}),
    curves=(Curve("rloo/reward", "Reward-model score (normalized)"), Curve("rloo/kl", "KL to the reference"),
            Curve("rloo/entropy", "Entropy")),
    trainer=train,
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
