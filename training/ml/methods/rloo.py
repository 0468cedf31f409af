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

from training.ml.configs import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_TEMPERATURE,
    bounded,
    require,
)
from training.ml.methods.base import (
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainingInputs,
    TrainingResult,
)
from training.ml.methods.cli import run_cli
from training.ml.methods.sampling_trainers import train_sampling_method
from training.ml.progress import StepReport

METRIC_NAMES = {"reward": "reward", "kl": "kl", "entropy": "entropy", "completions/mean_length": "length",
                "completions/clipped_ratio": "cut_off_share"}


@dataclass
class RLOOConfig:
    """How one RLOO update runs; saved with the policy version it produced."""

    num_generations: int = bounded(4, minimum=2, maximum=256)
    """Answers sampled per prompt; each is baselined by the mean reward of the others."""
    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Answers per optimizer step (a multiple of num_generations)."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the update's prompts."""
    max_completion_length: int = bounded(64, minimum=1, maximum=MAX_NEW_TOKENS)
    """New tokens per answer."""
    temperature: float = bounded(0.7, above=0, maximum=MAX_TEMPERATURE)
    """Sampling temperature of the answers."""
    learning_rate: float = bounded(3e-5, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter."""
    beta: float = bounded(0.05, minimum=0, maximum=10)
    """Weight of the KL penalty to the reference policy."""
    missing_eos_penalty: float = bounded(1.0, minimum=0, maximum=100)
    """Subtracted from the reward of an answer that never ends."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """KL reference: the base model, or the version this update starts from."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds sampling and initialization."""

    def validate(self) -> None:
        """The rules joining two fields; each field's own range is on the field."""
        require(self.batch_size % self.num_generations == 0,
                f"batch_size must be a multiple of num_generations ({self.num_generations})", field="batch_size")


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
