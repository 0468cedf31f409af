"""The TRL glue of the methods that sample answers to prompts and score them with our
reward model (GRPO, RLOO, online DPO): TRL's trainers for them take the same inputs
(a prompt-only dataset, reward functions, a LoRA policy, callbacks), so one function
builds and runs any of them. Each method's module keeps its config, its registry
entry, its command line and the few lines that are its own: the trainer, the TRL
arguments its config maps to, and how its KL reference and reward penalty are handled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.ml.engines import require_engine, trl_rollout_arguments
from training.ml.methods.base import (
    TrainerSetup,
    TrainingInputs,
    TrainingResult,
    adopt_reference,
    renamed,
    set_up,
    train_and_save,
)
from training.ml.progress import StepReport, report_steps
from training.ml.reward_function import RewardModelFunction


def train_sampling_method(
    inputs: TrainingInputs,
    out_dir: Path,
    config: Any,
    on_step: StepReport | None,
    *,
    method: str,
    trainer_class: type,
    trl_config_class: type,
    trl_arguments: dict[str, Any],
    metric_names: dict[str, str],
    reward_penalty: float,
    examples_per_step: int,
    examples_name: str,
    reference_model: Callable[[TrainerSetup], Any] | None = None,
) -> TrainingResult:
    """Train `trainer_class` (TRL's) on `inputs.prompts` against `inputs.reward_model`
    and write the adapter into `out_dir`.

    `config` is the method's own; its `seed`, `lora_r`, `lora_alpha` and `reference`
    are read here. `trl_arguments`: what the config sets in `trl_config_class` beyond
    the arguments every trainer here shares. `reward_penalty`: subtracted from the
    reward of an answer that never ended (0 where TRL applies the penalty itself).
    `metric_names`: TRL's log keys → ours, under `method/`. The result counts
    `examples_per_step` examples per optimizer step, reported as `examples_name`.
    `reference_model(setup)`: the KL reference to pass the trainer; without it TRL
    keeps its own (the adapter switched off, or a frozen copy of a continued adapter)
    and `adopt_reference` picks between them by `config.reference`.
    """
    from datasets import Dataset

    setup = set_up(inputs.start, out_dir, seed=config.seed, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                   precision=inputs.precision, gradient_checkpointing=inputs.gradient_checkpointing,
                   quantization=inputs.frozen_quantization)
    require_engine(inputs.sampling_engine, setup.device)
    reward = RewardModelFunction(inputs.reward_model, setup.tokenizer, reward_penalty, setup.device, setup.precision)
    rollouts = trl_rollout_arguments(inputs.sampling_engine, inputs.vllm_gpu_memory_utilization)
    args = trl_config_class(**setup.arguments, **trl_arguments, **rollouts)
    history: list[dict] = []
    references = {"ref_model": reference_model(setup)} if reference_model is not None else {}
    trainer = trainer_class(
        model=setup.policy, **references, reward_funcs=reward, args=args, processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
        train_dataset=Dataset.from_dict({"prompt": list(inputs.prompts)}),
        callbacks=[report_steps(history, on_step, renamed(method, metric_names))],
    )
    if reference_model is None:
        adopt_reference(trainer, config.reference)
    seconds = train_and_save(trainer, setup, out_dir)
    examples = trainer.state.global_step * examples_per_step
    return TrainingResult(history, seconds, examples, {examples_name: examples})
