"""Loading what every policy method shares: the device, seeds, the policy tokenizer, the
policy to sample from or to train (a LoRA adapter on the base model), and the KL
reference. One place, so that PPO, GRPO, DPO and the rest start from the same model the
same way."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from training.ml.precision import Precision, precision_on
from training.ml.quantization import DEFAULT_QUANTIZATION, quantization_config, require_quantization

FP32 = Precision("fp32")

# Written into every published artifact by the publishing service; a reader that finds
# a newer format refuses it instead of misreading it.
ARTIFACT_FILE = "prefloop_artifact.json"
ARTIFACT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PolicyStart:
    """Where a policy update starts: the base model, plus the adapter of the version it
    continues (None for the base itself)."""

    base_model_dir: Path
    adapter_dir: Path | None = None


def pick_device() -> torch.device:
    """The GPU if there is one (this process's own under `accelerate launch`), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def configure_torch_threads(threads: int) -> None:
    """Two torch processes on two cores fight over threads; workers pin theirs."""
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """The one seeding function: Python, NumPy, torch (CPU and CUDA) and transformers."""
    from transformers import set_seed

    random.seed(seed)
    set_seed(seed)  # numpy, torch, cuda


def load_tokenizer(model_dir: Path | str):
    """The policy tokenizer: left padding (decoder-only models continue from the right
    edge) and a pad token distinct from EOS (see training/ml/tokens.py)."""
    from transformers import AutoTokenizer

    from training.ml.tokens import use_distinct_pad

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    return use_distinct_pad(tokenizer)


def load_policy(model_dir: Path | str, adapter_dir: Path | str | None = None, device: torch.device | None = None,
                precision: Precision | str | None = None):
    """(model, tokenizer) ready for sampling, in the job's precision (a setting is
    resolved on `device`). In fp32 a LoRA adapter is merged in (exact up to rounding); in
    bf16 or fp16 it stays unmerged, in fp32 beside the reduced-precision base: merging
    its small update into bf16 weights would round much of it away, and the answers
    people label would come from another policy than the one trained
    (docs/benchmarks.md, "Sampling in bf16: merged or not")."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    precision = precision_for(precision, device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.dtype)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)  # adapter weights in fp32 (autocast_adapter_dtype)
        if not precision.reduced:
            model = model.merge_and_unload()
    return model.to(device).eval(), load_tokenizer(model_dir)


def precision_for(precision: Precision | str | None, device: torch.device) -> Precision:
    """A resolved precision as given, or a setting (None: auto) resolved on `device`."""
    return precision if isinstance(precision, Precision) else precision_on(precision, device)


def trainable_policy(start: PolicyStart, lora_r: int, lora_alpha: int, device: torch.device,
                     precision: Precision = FP32, quantization: str | None = None,
                     gradient_checkpointing: bool = False):
    """(model, peft_config for a TRL trainer). Continuing a version: its adapter, made
    trainable, and no peft_config. From the base: the plain model and a new LoRA config
    that the trainer wraps around it. The base weights are frozen and load in
    `precision`, or in 4-bit with `quantization` "nf4" (QLoRA: training/ml/quantization.py);
    the adapter trains in fp32 (PEFT's `autocast_adapter_dtype`, on by default in
    `PeftModel.from_pretrained` and `get_peft_model`, which TRL calls)."""
    from peft import LoraConfig, PeftModel, TaskType
    from transformers import AutoModelForCausalLM

    if (quantization or DEFAULT_QUANTIZATION) != "none":
        from peft import prepare_model_for_kbit_training

        kind = require_quantization(quantization, device)
        model = AutoModelForCausalLM.from_pretrained(
            start.base_model_dir, dtype=precision.dtype, device_map={"": device},
            quantization_config=quantization_config(kind, precision.dtype))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(start.base_model_dir, dtype=precision.dtype).to(device)
    if start.adapter_dir is not None:
        return PeftModel.from_pretrained(model, start.adapter_dir, is_trainable=True), None
    return model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha,
                             target_modules="all-linear")


REFERENCE_ADAPTER = "ref"
"""The name of a frozen copy of the start's adapter beside the trained one (TRL's name
for it in GRPO, RLOO and DPO)."""


def add_reference_adapter(policy, start: PolicyStart, reference: str) -> str | None:
    """The adapter that serves as the KL reference, on `policy` itself: None (the
    adapter switched off: the base) for reference "initial" or a policy that starts
    from the base; for "previous" on a continued version, its adapter loaded again as a
    frozen adapter "ref" beside the trained one (megabytes, where a merged copy of the
    model would be the model's size again)."""
    if reference not in ("initial", "previous"):
        raise ValueError(f"reference must be 'initial' or 'previous', not {reference!r}")
    if reference == "initial" or start.adapter_dir is None:
        return None
    policy.load_adapter(start.adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    return REFERENCE_ADAPTER


class AdapterReference(torch.nn.Module):
    """A KL reference that is the policy's own weights, not a copy of them: the policy
    (a PeftModel) called with its adapter switched off (`adapter` None: the base), or
    with the frozen adapter `adapter` switched in (TRL's `use_adapter`). For trainers
    that want a reference model to call (PPO under DDP, which cannot switch adapters
    through the wrapped model; online DPO, which otherwise deep-copies a continued
    adapter's whole model). The policy is held outside the module's children, so
    Accelerate, `.to()` and `parameters()` see no weights here (no second copy, none
    moved or wrapped twice); call it without gradients."""

    def __init__(self, policy, adapter: str | None = None) -> None:
        super().__init__()
        self._held = (policy,)  # a tuple: not registered as a submodule
        self.adapter = adapter

    @property
    def policy(self):
        return self._held[0]

    @property
    def config(self):
        return self.policy.config

    def forward(self, *args, **kwargs):
        from trl.trainer.utils import use_adapter

        with use_adapter(self.policy, self.adapter):
            return self.policy(*args, **kwargs)


def save_policy(model, tokenizer, out_dir: Path, state_dict: dict | None = None) -> None:
    """The trained LoRA adapter (not the base weights, nor a frozen reference copy a
    trainer kept beside it) and the tokenizer it was trained with. `state_dict`: the
    weights gathered from processes that each held a shard of them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    adapters = getattr(model, "peft_config", {})
    options = {"selected_adapters": ["default"]} if len(adapters) > 1 else {}
    if state_dict is not None:
        options["state_dict"] = state_dict
    model.save_pretrained(out_dir, **options)
    tokenizer.save_pretrained(out_dir)


def read_artifact_manifest(artifact_dir: Path) -> dict:
    """The manifest a published artifact carries (format version, kind, config), or {}
    for an artifact published before manifests existed."""
    path = Path(artifact_dir) / ARTIFACT_FILE
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    if manifest.get("format_version", 0) > ARTIFACT_FORMAT_VERSION:
        raise ValueError(f"{artifact_dir} was written by a newer PrefLoop (format {manifest['format_version']})")
    return manifest
