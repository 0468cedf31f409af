"""Supervised fine-tuning on the chosen answers of the run's preference pairs (the
LIMA-style baseline: no reward model, no rejected answers, no sampling). Of each
comparison, the answers people preferred and never rejected are the targets: the
chosen one of a pairwise label, the best of a ranking.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.ml.configs import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEED,
    MAX_SEQUENCE,
    bounded,
)
from training.ml.methods.base import PAIRS, Curve, Method, TrainingInputs, TrainingResult
from training.ml.methods.cli import run_cli
from training.ml.methods.supervised import Example, fine_tune
from training.ml.preference_pairs import PreferencePair
from training.ml.progress import StepReport


@dataclass
class SFTChosenConfig:
    """How one fine-tuning on chosen answers runs; saved with the version it produced."""

    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Answers per optimizer step."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the answers."""
    learning_rate: float = bounded(1e-4, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter."""
    max_length: int = bounded(512, minimum=16, maximum=MAX_SEQUENCE)
    """Prompt plus answer tokens; longer answers are cut at the end."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds data order and initialization."""


def chosen_answers(pairs: Sequence[PreferencePair]) -> list[Example]:
    """Per comparison (a pair's group), each answer that was chosen at least once and
    never rejected; one example per distinct (prompt, answer). Two people who disagree
    on a comparison leave it with no target."""
    chosen: dict[int, list[PreferencePair]] = defaultdict(list)
    rejected: dict[int, set[str]] = defaultdict(set)
    for pair in pairs:
        chosen[pair.group].append(pair)
        rejected[pair.group].add(pair.rejected)
    examples, seen = [], set()
    for group, group_pairs in chosen.items():
        for pair in group_pairs:
            key = (json.dumps(pair.prompt, sort_keys=True), pair.chosen)
            if pair.chosen not in rejected[group] and key not in seen:
                seen.add(key)
                examples.append((pair.prompt, pair.chosen, pair.chosen_ended, pair.chosen_ids))
    return examples


def train(inputs: TrainingInputs, out_dir: Path, config: SFTChosenConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    examples = chosen_answers(inputs.pairs)
    history, seconds = fine_tune(inputs.start, examples, out_dir, config, method="sft_chosen", on_step=on_step,
                                 precision=inputs.precision, gradient_checkpointing=inputs.gradient_checkpointing,
                                 quantization=inputs.frozen_quantization)
    return TrainingResult(history, seconds, len(examples), {"answers": len(examples), "pairs": len(inputs.pairs)})


METHOD = Method(
    name="sft_chosen",
    title="SFT on chosen",
    summary="supervised fine-tuning on the answers people preferred; no reward model, no sampling",
    config_class=SFTChosenConfig,
    needs=frozenset({PAIRS}),
    curves=(Curve("sft_chosen/loss", "Loss on the chosen answers"),
            Curve("sft_chosen/token_accuracy", "Next-token accuracy on the chosen answers")),
    trainer=train,
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
