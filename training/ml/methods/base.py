"""What every policy-update method shares: its inputs, its result, and its registry
entry (see training/ml/methods/__init__.py)."""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.ml.configs import SettingNames, config_from_dict
from training.ml.engines import DEFAULT_ENGINE, VLLM_GPU_MEMORY_UTILIZATION
from training.ml.loading import (
    PolicyStart,
    load_tokenizer,
    pick_device,
    precision_for,
    save_policy,
    seed_everything,
    trainable_policy,
)
from training.ml.precision import DEFAULT_PRECISION, Precision
from training.ml.preference_pairs import PreferencePair
from training.ml.progress import StepReport
from training.ml.quantization import DEFAULT_QUANTIZATION
from training.ml.reward_scoring import RewardModelRef

REWARD_MODEL, PAIRS, PROMPTS = "reward_model", "pairs", "prompts"

GRADIENT_CHECKPOINTING = ("auto", "on", "off")
"""What a run may say about gradient checkpointing in its policy updates: recomputing
each layer's activations in the backward pass instead of keeping them, which cuts
activation memory from every layer's to about one layer's, for about a third more
compute. "auto": on on CUDA, where activations are what fills the GPU at batch × length
of real models; off on the CPU, where memory is not what runs short and time is."""
CHECKPOINTING_KWARGS = {"use_reentrant": False}
"""Non-reentrant checkpointing: gradients reach a LoRA adapter through a frozen base's
layers without making the embeddings' outputs require grad."""


@dataclass
class TrainingInputs:
    """Everything a method may read; each method uses what it declares in `needs`."""

    start: PolicyStart
    prompts: Sequence[list[dict]] = ()
    """Conversations ending with a user turn."""
    pairs: Sequence[PreferencePair] = ()
    reward_model: RewardModelRef | None = None
    precision: str = DEFAULT_PRECISION
    """The run's precision setting (training/ml/precision.py), resolved on the device
    the method trains on."""
    gradient_checkpointing: str = "auto"
    """The run's setting (GRADIENT_CHECKPOINTING): "auto" is on on CUDA, off on the CPU."""
    sampling_engine: str = DEFAULT_ENGINE
    """What samples answers (training/ml/engines.py): best-of-N's draws, and GRPO's,
    RLOO's and online DPO's rollouts (TRL's vLLM colocate mode with "vllm")."""
    frozen_quantization: str = DEFAULT_QUANTIZATION
    """How the base under the trained adapter (the reference) loads: "nf4" is QLoRA
    (training/ml/quantization.py); the reward model's is `reward_model.quantization`."""
    vllm_gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION
    """Share of the GPU a colocated vLLM engine reserves (PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION)."""


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
    curves its pages draw, its training function (which imports TRL only when called,
    so reading the registry in the web process stays light), and which deployment
    settings give its config's defaults for a new run."""

    name: str
    title: str
    summary: str
    config_class: type
    needs: frozenset[str]
    curves: tuple[Curve, ...]
    trainer: Callable[[TrainingInputs, Path, Any, StepReport | None], TrainingResult]
    deployment_defaults: SettingNames = field(default_factory=dict, hash=False)
    """Config field → the setting that supplies its default for a new run (names only;
    see training/ml/configs.py `values_from_settings`). Fields not named keep the
    dataclass defaults."""

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


@dataclass
class TrainerSetup:
    """What every TRL-based method builds before its trainer: the seeded, device-placed
    policy to train and where the trainer may write its scratch files."""

    device: Any
    precision: Precision
    """Resolved on `device`: frozen weights in its dtype, trained ones in fp32."""
    tokenizer: Any
    """Left padding, pad distinct from EOS (training/ml/loading.py)."""
    policy: Any
    peft_config: Any
    """A new LoRA config when starting from the base; None when continuing an adapter."""
    work_dir: Path
    """The trainer's output_dir, beside out_dir and removed after training."""
    gradient_checkpointing: bool
    arguments: dict
    """TRL arguments every trainer here shares (see trainer_arguments)."""


def set_up(start: PolicyStart, out_dir: Path, *, seed: int, lora_r: int, lora_alpha: int,
           precision: Precision | str | None = None, gradient_checkpointing: str | None = None,
           quantization: str | None = None) -> TrainerSetup:
    seed_everything(seed)
    device = pick_device()
    resolved = precision_for(precision, device)
    checkpointing = gradient_checkpointing_on(gradient_checkpointing, device)
    tokenizer = load_tokenizer(start.base_model_dir)
    policy, peft_config = trainable_policy(start, lora_r, lora_alpha, device, resolved, quantization, checkpointing)
    work_dir = out_dir.with_name(out_dir.name + ".trainer")
    return TrainerSetup(device, resolved, tokenizer, policy, peft_config, work_dir, checkpointing,
                        trainer_arguments(work_dir, seed, device, resolved, checkpointing))


def gradient_checkpointing_on(setting: str | None, device) -> bool:
    """What a run's GRADIENT_CHECKPOINTING setting (None: auto) means on `device`."""
    setting = setting or "auto"
    if setting not in GRADIENT_CHECKPOINTING:
        raise ValueError(f"gradient_checkpointing must be one of {', '.join(GRADIENT_CHECKPOINTING)}, "
                         f"not {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def generation_keeps_its_cache(model) -> None:
    """Make `generate` on the model (a PeftModel or a causal LM; the causal LM inside
    either way) run with gradient checkpointing switched off and the KV cache on, then
    switch checkpointing back on as it was. With checkpointing on and the model in
    train mode, as a trainer's policy is while it samples its rollouts, transformers'
    layers drop the cache (modeling_layers.py) and every new token recomputes the whole
    sequence; online DPO also asks for no cache whenever checkpointing is on."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = causal_lm.generate
    if getattr(original, "keeps_its_cache", False):
        return

    @functools.wraps(original)
    def generate(*args, **kwargs):
        checkpointing = causal_lm.is_gradient_checkpointing
        if checkpointing:
            causal_lm.gradient_checkpointing_disable()
        try:
            return original(*args, **{**kwargs, "use_cache": True})
        finally:
            if checkpointing:
                causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)

    generate.keeps_its_cache = True
    causal_lm.generate = generate


def train_and_save(trainer, setup: TrainerSetup, out_dir: Path, policy=None) -> float:
    """Train, drop the trainer's scratch files whatever happens, write the adapter into
    out_dir (callers publish it by renaming). Returns the training's wall seconds.
    `policy` is the trained model when the trainer does not call it `model` (PPO)."""
    started = time.monotonic()
    accelerator = trainer.accelerator
    generation_keeps_its_cache(policy if policy is not None else trainer.model)
    try:
        trainer.train()
    except BaseException:
        shutil.rmtree(setup.work_dir, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    # Under `accelerate launch` (training/ml/launch.py) the processes of a machine share
    # the scratch folder, and transformers lists its checkpoints as each one's training
    # ends: it is removed once all are done, by one process per machine (each machine of
    # a multi-node launch has its own, unless their disks are shared, when the removals
    # just overlap). One process writes the weights and none returns before the files
    # are complete.
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        shutil.rmtree(setup.work_dir, ignore_errors=True)
    model = policy if policy is not None else trainer.model
    state_dict = gathered_state_dict(trainer, within="policy." if policy is not None else "")
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(model), setup.tokenizer, out_dir, state_dict)
    accelerator.wait_for_everyone()
    return seconds


def gathered_state_dict(trainer, within: str = "") -> dict | None:
    """Weights that DeepSpeed ZeRO-3 or FSDP spread over the processes, gathered (every
    process takes part) from the engine the trainer trained; None when each process
    holds them whole (one process, DDP, ZeRO-1/2). `within`: the prefix of the saved
    model's weights in the engine (PPO trains the policy and value model as one).
    Not run on this project's CPU machine: written to Accelerate's and DeepSpeed's docs."""
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if accelerator.state.deepspeed_plugin.zero_stage != 3:
            return None
    elif accelerator.distributed_type != DistributedType.FSDP:
        return None
    engine = getattr(trainer, "model_wrapped", None) or trainer.model
    weights = accelerator.get_state_dict(engine)
    if weights is None or not within:
        return weights
    return {key.removeprefix(within): value for key, value in weights.items() if key.startswith(within)}


def trainer_arguments(work_dir: Path, seed: int, device, precision: Precision, gradient_checkpointing: bool) -> dict:
    """Arguments every TRL trainer here shares: the job's precision and gradient
    checkpointing (TRL's own defaults are bf16 and checkpointing everywhere, the CPU
    included)."""
    return {"output_dir": str(work_dir), "seed": seed, "use_cpu": device.type == "cpu",
            **precision.trainer_flags, "gradient_checkpointing": gradient_checkpointing,
            "gradient_checkpointing_kwargs": CHECKPOINTING_KWARGS, "report_to": [],
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
