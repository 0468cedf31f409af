"""One precision setting for every model a job loads and every trainer it runs.

A run says `auto`, `bf16`, `fp16` or `fp32` (Run.precision, pinned into each job's
params); the job resolves it on the device it runs on, here, without Django:

- `auto`: bf16 on a CUDA device that computes in it natively (compute capability 8.0
  and up: Ampere, Hopper, ...), fp16 on older CUDA devices, fp32 on the CPU (bf16 on a
  CPU is slower than fp32 and rounds the answers people label);
- `bf16` / `fp16` / `fp32`: as said; fp16 only on CUDA (its loss scaling needs a GPU).

What the resolved precision means for a model:
- Frozen weights (the base under a LoRA adapter, the reward model that scores, a
  sampling policy) are loaded in `dtype`.
- Weights that train stay fp32 (LoRA adapters: PEFT's `autocast_adapter_dtype` keeps
  them so on a reduced-precision base; fully fine-tuned models are loaded in fp32) and
  the trainer computes in `dtype` under autocast (`trainer_flags`, `mixed_precision`).
- On CUDA, fp32 matmuls use TF32 (`enable_tf32`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""What a run may say (Run.precision)."""
DEFAULT_PRECISION = "auto"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BF16_NATIVE_CAPABILITY = (8, 0)
"""Compute capability from which CUDA devices do bf16 matmuls in hardware."""


class PrecisionError(ValueError):
    """A precision that is not one of PRECISIONS, or one the device cannot run."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision: "bf16", "fp16" or "fp32"."""

    name: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype frozen weights load in."""
        return DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    @property
    def trainer_flags(self) -> dict[str, bool]:
        """transformers' / TRL's `bf16` and `fp16` training arguments."""
        return {"bf16": self.name == "bf16", "fp16": self.name == "fp16"}

    @property
    def mixed_precision(self) -> str:
        """Accelerate's name for it (`Accelerator(mixed_precision=...)`)."""
        return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[self.name]


def check_precision(setting: str) -> str:
    """The setting, if it is one of PRECISIONS; PrecisionError naming them otherwise."""
    if setting not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, not {setting!r}")
    return setting


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def resolve_precision(setting: str | None, device: torch.device,
                      capability: Callable[[torch.device], tuple[int, int]] = cuda_capability) -> Precision:
    """What `setting` (None: auto) means on `device`. `capability` reads a CUDA device's
    compute capability (injected by tests)."""
    setting = check_precision(setting or DEFAULT_PRECISION)
    cuda = device.type == "cuda"
    if setting == "auto":
        if not cuda:
            return Precision("fp32")
        return Precision("bf16" if tuple(capability(device)) >= BF16_NATIVE_CAPABILITY else "fp16")
    if setting == "fp16" and not cuda:
        raise PrecisionError(f"precision fp16 needs a CUDA device and this job runs on {device.type}: "
                             "set the run's precision to auto, bf16 or fp32")
    return Precision(setting)


def enable_tf32(device: torch.device) -> None:
    """On CUDA, fp32 matmuls in TF32 (10-bit mantissa inputs, fp32 accumulation): what
    is left in fp32 (LoRA adapters, heads, an fp32 run) runs at tensor-core speed."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def precision_on(setting: str | None, device: torch.device) -> Precision:
    """Resolve the setting for the device the job runs on and switch TF32 on there."""
    precision = resolve_precision(setting, device)
    enable_tf32(device)
    return precision
