"""DPO (Rafailov et al. 2023) with TRL's `DPOTrainer`, straight from the run's preference
pairs: no reward model and no sampling. The loss raises the policy's log-probability
ratio (against the reference) of the chosen answer over the rejected one; β says how
strongly the reference holds it back.
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
    MAX_SEED,
    MAX_SEQUENCE,
    bounded,
)
from training.ml.methods.base import (
    PAIRS,
    Curve,
    Method,
    TrainingInputs,
    TrainingResult,
    adopt_reference,
    renamed,
    set_up,
    train_and_save,
)
from training.ml.methods.cli import run_cli
from training.ml.preference_pairs import PreferencePair
from training.ml.progress import StepReport, report_steps
from training.ml.tokens import answer_input_ids, prompt_input_ids

METRIC_NAMES = {"rewards/margins": "margin", "rewards/accuracies": "accuracy", "rewards/chosen": "chosen_reward",
                "rewards/rejected": "rejected_reward"}


@dataclass
class DPOConfig:
    """How one DPO update runs; saved with the policy version it produced."""

    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Preference pairs per optimizer step."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the pairs."""
    learning_rate: float = bounded(5e-5, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter."""
    beta: float = bounded(0.1, above=0, maximum=10)
    """How far the policy may move from the reference per unit of preference."""
    loss_type: Literal["sigmoid", "ipo", "robust", "hinge"] = "sigmoid"
    """DPO's logistic loss, IPO's squared loss, the noise-robust variant, or a hinge."""
    label_smoothing: float = bounded(0.0, minimum=0, below=0.5)
    """For the robust loss: the assumed share of flipped labels (people disagree ~25–35%)."""
    max_length: int = bounded(512, minimum=16, maximum=MAX_SEQUENCE)
    """Prompt plus answer tokens; longer answers are cut at the end."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """DPO's reference: the base model, or the version this update starts from."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds data order and initialization."""


def preference_rows(tokenizer, pairs: list[PreferencePair]) -> dict[str, list]:
    """TRL's processed preference format, one row per (chosen, rejected) pair: the
    templated prompt, and each answer as the policy generated it (training/ml/tokens.py)."""
    return {"prompt_ids": [prompt_input_ids(tokenizer, p.prompt) for p in pairs],
            "chosen_ids": [answer_input_ids(tokenizer, p.chosen, p.chosen_ended, p.chosen_ids) for p in pairs],
            "rejected_ids": [answer_input_ids(tokenizer, p.rejected, p.rejected_ended, p.rejected_ids) for p in pairs]}


def pretokenized_dpo_trainer():
    """TRL's DPOTrainer, taking rows already tokenized: it would otherwise re-encode the
    answers' text, which is not what the policy generated."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            # As TRL does: drop a row whose prompt alone fills max_length (nothing left to learn).
            return dataset.filter(lambda row: args.max_length is None or len(row["prompt_ids"]) < args.max_length)

    return PretokenizedDPOTrainer


def train(inputs: TrainingInputs, out_dir: Path, config: DPOConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig

    setup = set_up(inputs.start, out_dir, seed=config.seed, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                   precision=inputs.precision, gradient_checkpointing=inputs.gradient_checkpointing,
                   quantization=inputs.frozen_quantization)
    args = TRLConfig(
        **setup.arguments,
        per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs,
        learning_rate=config.learning_rate, beta=config.beta, loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing, max_length=config.max_length,
    )
    history: list[dict] = []
    trainer = pretokenized_dpo_trainer()(
        model=setup.policy, ref_model=None, args=args, processing_class=setup.tokenizer, peft_config=setup.peft_config,
        train_dataset=Dataset.from_dict(preference_rows(setup.tokenizer, list(inputs.pairs))),
        callbacks=[report_steps(history, on_step, renamed("dpo", METRIC_NAMES))],
    )
    adopt_reference(trainer, config.reference)
    seconds = train_and_save(trainer, setup, out_dir)
    return TrainingResult(history, seconds, len(inputs.pairs), {"pairs": len(inputs.pairs)})


METHOD = Method(
    name="dpo",
    title="DPO",
    summary="direct preference optimization on the labeled pairs; no reward model, no sampling",
    config_class=DPOConfig,
    needs=frozenset({PAIRS}),
    curves=(Curve("dpo/loss", "DPO loss"), Curve("dpo/margin", "Implicit reward margin (chosen − rejected)"),
            Curve("dpo/accuracy", "Pairs ranked right by the implicit reward")),
    trainer=train,
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
