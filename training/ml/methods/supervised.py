"""The supervised step two methods end with (SFT on chosen answers, best-of-N): TRL's
`SFTTrainer` with the loss on the answer only. Rows are handed over tokenized, the
answer as the policy generated it (training/ml/tokens.py): re-encoding the decoded text
would teach the policy token splits it never produces."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from training.ml.loading import PolicyStart, load_tokenizer, pick_device, save_policy, trainable_policy
from training.ml.methods.base import renamed, trainer_arguments
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


def fine_tune(start: PolicyStart, examples: Sequence[Example], out_dir: Path, *, method: str, batch_size: int,
              epochs: float, learning_rate: float, max_length: int, lora_r: int, lora_alpha: int, seed: int,
              on_step: StepReport | None) -> tuple[list[dict], float]:
    """Train the policy on the examples and write its adapter; returns (history, seconds)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("there is no answer to fine-tune on")
    device = pick_device()
    tokenizer = load_tokenizer(start.base_model_dir)
    policy, peft_config = trainable_policy(start, lora_r, lora_alpha, device)
    work_dir = out_dir.with_name(out_dir.name + ".trainer")
    args = SFTConfig(
        **trainer_arguments(work_dir, seed, device), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, learning_rate=learning_rate, max_length=max_length,
        completion_only_loss=True,  # the prompt is given, not learned
    )
    dataset = Dataset.from_dict(tokenized_examples(tokenizer, examples))
    history: list[dict] = []
    trainer = SFTTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[report_steps(history, on_step, renamed(method,
                                                                                                    METRIC_NAMES))])
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    save_policy(trainer.model, tokenizer, out_dir)
    return history, seconds
