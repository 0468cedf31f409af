"""The supervised step two methods end with (SFT on chosen answers, best-of-N): TRL's
`SFTTrainer` with the loss on the answer only. Rows are handed over tokenized, the
answer as the policy generated it (training/ml/tokens.py): re-encoding the decoded text
would teach the policy token splits it never produces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.ml.loading import PolicyStart
from training.ml.methods.base import renamed, set_up, train_and_save
from training.ml.progress import StepReport, report_steps
from training.ml.tokens import answer_input_ids, prompt_input_ids

METRIC_NAMES = {"mean_token_accuracy": "token_accuracy"}

Example = tuple
"""(prompt messages, answer text, ended, generated token ids or None): the answer to learn"""


def tokenized_examples(tokenizer, examples: Sequence[Example]) -> dict[str, list]:
    """TRL's processed SFT format: `input_ids` and a `completion_mask` over the answer."""
    rows = {"input_ids": [], "completion_mask": []}
    for prompt, text, ended, token_ids in examples:
        prompt_ids = prompt_input_ids(tokenizer, prompt)
        answer_ids = answer_input_ids(tokenizer, text, ended, token_ids)
        rows["input_ids"].append(prompt_ids + answer_ids)
        rows["completion_mask"].append([0] * len(prompt_ids) + [1] * len(answer_ids))
    return rows


def fine_tune(start: PolicyStart, examples: Sequence[Example], out_dir: Path, config, *, method: str,
              on_step: StepReport | None, precision: str | None = None,
              gradient_checkpointing: str | None = None, quantization: str | None = None) -> tuple[list[dict], float]:
    """Train the policy on the examples and write its adapter; returns (history, seconds).
    `config` is the calling method's: its batch_size, epochs, learning_rate, max_length,
    lora_r, lora_alpha and seed apply; `precision`, `gradient_checkpointing` and
    `quantization` (of the frozen base) are the run's settings."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("there is no answer to fine-tune on")
    setup = set_up(start, out_dir, seed=config.seed, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                   precision=precision, gradient_checkpointing=gradient_checkpointing, quantization=quantization)
    args = SFTConfig(
        **setup.arguments, per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs, learning_rate=config.learning_rate, max_length=config.max_length,
        completion_only_loss=True,  # the prompt is given, not learned
    )
    dataset = Dataset.from_dict(tokenized_examples(setup.tokenizer, examples))
    history: list[dict] = []
    trainer = SFTTrainer(model=setup.policy, args=args, train_dataset=dataset, processing_class=setup.tokenizer,
                         peft_config=setup.peft_config,
                         callbacks=[report_steps(history, on_step, renamed(method, METRIC_NAMES))])
    return history, train_and_save(trainer, setup, out_dir)
