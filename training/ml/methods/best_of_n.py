"""Best-of-N then SFT (rejection sampling, as Llama 2 did before PPO; "expert iteration"
in AlpacaFarm): sample N answers per prompt from the current policy, score them with
the reward model, and fine-tune on the best answer of each prompt. TRL dropped its
best-of-N sampler, so the sampling and the choice are ours (`best_answers`); the
fine-tuning is TRL's `SFTTrainer` (training/ml/methods/supervised.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

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
from training.ml.engines import sample_answers
from training.ml.generation import Sample, SamplingConfig
from training.ml.loading import pick_device, seed_everything
from training.ml.methods.base import (
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainingInputs,
    TrainingResult,
)
from training.ml.methods.cli import run_cli
from training.ml.methods.supervised import Example, fine_tune
from training.ml.precision import precision_on
from training.ml.progress import StepReport
from training.ml.reward_scoring import RewardScorer


@dataclass
class BestOfNConfig:
    """How one best-of-N update runs; saved with the policy version it produced."""

    n: int = bounded(4, minimum=2, maximum=256)
    """Answers sampled per prompt; the best by reward-model score is kept."""
    max_new_tokens: int = bounded(64, minimum=1, maximum=MAX_NEW_TOKENS)
    """New tokens per sampled answer."""
    temperature: float = bounded(0.8, above=0, maximum=MAX_TEMPERATURE)
    """Sampling temperature (diversity among the N)."""
    sampling_batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Prompts per generate call."""
    min_score: float | None = bounded(None, minimum=-10, maximum=10)
    """Keep a prompt's best answer only if its normalized score is at least this (empty: always)."""
    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Answers per fine-tuning step."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the kept answers."""
    learning_rate: float = bounded(1e-4, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter."""
    max_length: int = bounded(512, minimum=16, maximum=MAX_SEQUENCE)
    """Prompt plus answer tokens in fine-tuning."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds sampling, data order and initialization."""

    def validate(self) -> None:
        """The rules joining two fields; each field's own range is on the field."""
        require(self.max_length > self.max_new_tokens, f"max_length must exceed max_new_tokens ({self.max_new_tokens})",
                field="max_length")


@dataclass(frozen=True)
class Choice:
    prompt_index: int
    sample: Sample
    score: float


def best_answers(samples: Sequence[Sequence[Sample]], scores: Sequence[Sequence[float]],
                 min_score: float | None = None) -> list[Choice]:
    """For each prompt, its highest-scoring sample (the first of equals), unless that
    score is below `min_score`. `samples[i]` and `scores[i]` are prompt i's N of each."""
    chosen = []
    for index, (answers, answer_scores) in enumerate(zip(samples, scores, strict=True)):
        if len(answers) != len(answer_scores) or not answers:
            raise ValueError(f"prompt {index}: {len(answers)} samples but {len(answer_scores)} scores")
        best = max(range(len(answers)), key=lambda i: (answer_scores[i], -i))
        if min_score is None or answer_scores[best] >= min_score:
            chosen.append(Choice(index, answers[best], float(answer_scores[best])))
    return chosen


def sample_and_score(inputs: TrainingInputs, config: BestOfNConfig) -> tuple[list[list[Sample]], list[list[float]]]:
    """N samples per prompt from the starting policy, and their normalized scores."""
    device = pick_device()
    precision = precision_on(inputs.precision, device)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              batch_size=config.sampling_batch_size, seed=config.seed)
    samples = sample_answers(inputs.sampling_engine, inputs.start.base_model_dir, inputs.start.adapter_dir,
                             inputs.prompts, config.n, sampling, precision, device=device)
    ref = inputs.reward_model
    scorer = RewardScorer.load(ref.base_model_dir, ref.weights_dir, ref.mean, ref.std, device, precision,
                               ref.quantization)
    flat = [(prompt, s.text, s.ended, s.token_ids) for prompt, group in zip(inputs.prompts, samples, strict=True)
            for s in group]
    scores = scorer.score(flat).tolist()
    return samples, [scores[i * config.n:(i + 1) * config.n] for i in range(len(samples))]


def train(inputs: TrainingInputs, out_dir: Path, config: BestOfNConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    seed_everything(config.seed)
    started = time.monotonic()
    samples, scores = sample_and_score(inputs, config)
    sampling_seconds = time.monotonic() - started
    kept = best_answers(samples, scores, config.min_score)
    examples: list[Example] = [(inputs.prompts[c.prompt_index], c.sample.text, c.sample.ended, c.sample.token_ids)
                               for c in kept]
    history, seconds = fine_tune(inputs.start, examples, out_dir, config, method="best_of_n", on_step=on_step,
                                 precision=inputs.precision, gradient_checkpointing=inputs.gradient_checkpointing,
                                 quantization=inputs.frozen_quantization)
    all_scores = torch.tensor([s for group in scores for s in group])
    summary = {"sampled": int(all_scores.numel()), "kept": len(kept),
               "mean_score_sampled": float(all_scores.mean()) if all_scores.numel() else None,
               "mean_score_kept": sum(c.score for c in kept) / len(kept) if kept else None}
    summary["sampling_seconds"] = round(sampling_seconds, 1)
    # Sampling and scoring are this method's rollouts: they count in its training time.
    return TrainingResult(history, sampling_seconds + seconds, len(kept), summary)


METHOD = Method(
    name="best_of_n",
    title="Best-of-N then SFT",
    summary="sample N answers per prompt, keep the reward model's favourite, fine-tune on it",
    config_class=BestOfNConfig,
    needs=frozenset({REWARD_MODEL, PROMPTS}),
    curves=(Curve("best_of_n/loss", "Loss on the best answers"),
            Curve("best_of_n/token_accuracy", "Next-token accuracy on the best answers")),
    trainer=train,
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
