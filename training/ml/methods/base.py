"""What every policy-update method shares: its inputs, its result, and its registry
entry (see training/ml/methods/__init__.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.ml.configs import config_from_dict
from training.ml.loading import PolicyStart
from training.ml.progress import StepReport
from training.ml.reward import PreferencePair, RewardModelRef

REWARD_MODEL, PAIRS, PROMPTS = "reward_model", "pairs", "prompts"


@dataclass
class TrainingInputs:
    """Everything a method may read; each method uses what it declares in `needs`."""

    start: PolicyStart
    prompts: Sequence[list[dict]] = ()
    """Conversations ending with a user turn."""
    pairs: Sequence[PreferencePair] = ()
    reward_model: RewardModelRef | None = None


@dataclass
class TrainingResult:
    """What a method reports besides the adapter it wrote."""

    history: list[dict] = field(default_factory=list)
    """Logged metrics per step, keys namespaced by method (`ppo/kl`, `dpo/loss`, ...)."""
    seconds: float = 0.0
    """Wall time of the training itself (model loading excluded)."""
    examples: int = 0
    """Rollouts, pairs or answers trained on."""
    summary: dict[str, Any] = field(default_factory=dict)
    """A few method-specific numbers for the version page (e.g. best-of-N's mean score)."""


@dataclass(frozen=True)
class Curve:
    """A metric a method's version page plots, and the chart title."""

    key: str
    title: str


@dataclass(frozen=True)
class Method:
    """A registry entry: the method's name, what it needs, how its config looks, which
    curves its pages draw, and its training function (which imports TRL only when
    called, so reading the registry in the web process stays light)."""

    name: str
    title: str
    summary: str
    config_class: type
    needs: frozenset[str]
    curves: tuple[Curve, ...]
    trainer: Callable[[TrainingInputs, Path, Any, StepReport | None], TrainingResult]

    def config(self, values: dict[str, Any] | None = None, strict: bool = True):
        """A validated config from plain values; missing fields take their defaults."""
        return config_from_dict(self.config_class, values or {}, strict=strict)

    def train(self, inputs: TrainingInputs, out_dir: Path, config, on_step: StepReport | None = None) -> TrainingResult:
        given = {PROMPTS: inputs.prompts, PAIRS: inputs.pairs, REWARD_MODEL: inputs.reward_model}
        missing = [need for need in sorted(self.needs) if not given[need]]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(missing)} and got none")
        started = time.monotonic()
        result = self.trainer(inputs, out_dir, config, on_step)
        result.seconds = result.seconds or time.monotonic() - started
        return result


def trainer_arguments(work_dir: Path, seed: int, device) -> dict:
    """Arguments every TRL trainer here shares. TRL's defaults assume a GPU (bf16) and a
    big model (gradient checkpointing, which also turns off the KV cache when
    sampling); neither helps a LoRA policy on a CPU."""
    return {"output_dir": str(work_dir), "seed": seed, "use_cpu": device.type == "cpu",
            "bf16": device.type == "cuda", "gradient_checkpointing": False, "report_to": [],
            "save_strategy": "no", "logging_steps": 1}


def adopt_reference(trainer, reference: str) -> None:
    """TRL gives a continued adapter a frozen copy of itself (the adapter "ref") as the
    KL reference: the version this update starts from. For the "initial" reference the
    copy is dropped, so the reference is the policy with its adapter switched off, the
    base model, as in PPO."""
    model = trainer.model
    if reference == "initial" and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def renamed(method: str, names: dict[str, str]) -> Callable[[str], str]:
    """Metric keys under the method's namespace: TRL's `rewards/margins` → `dpo/margin`."""
    return lambda key: f"{method}/{names.get(key, key)}"
