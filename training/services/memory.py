"""Will a job fit? The memory plan (training/ml/memory_plan.py) of a policy update or a
reward-model training on this worker's device, checked before the job loads anything,
and shown on the run's settings page for the devices teams train on."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from training.ml.memory_plan import GIB, MemoryPlan, ModelShape, plan_for_method, plan_reward_training

PLANNED_PROMPT_TOKENS = 128
"""Prompt length a settings page plans for (a job plans for its own longest prompt)."""
PAGE_DEVICES = (("CUDA, 24 GB", "cuda", 24), ("CUDA, 48 GB", "cuda", 48), ("CUDA, 80 GB", "cuda", 80))


class JobTooLarge(RuntimeError):
    """The job's planned peak exceeds its device's memory; the message names what to change."""


@functools.lru_cache(maxsize=32)
def shape_of(base_model_dir: str) -> ModelShape:
    """From the model's config.json alone (built on the meta device), once per process."""
    from training.ml.memory_plan import shape_of_model_dir

    return shape_of_model_dir(base_model_dir)


def this_device() -> tuple[str, int]:
    """The kind of device a job here trains on, and its memory in bytes (a GPU's own,
    or the machine's RAM for CPU processes)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_dtype(device: str) -> str:
    """The precision policies and reward models train in today: fp32 weights (with bf16
    autocast on CUDA)."""
    return "fp32"


def check_fits(plan: MemoryPlan, device_bytes: int, processes_sharing: int = 1) -> None:
    """Refuse a job whose plan exceeds the device. The CPU processes of one launch share
    the machine's memory, each holding its own models."""
    if processes_sharing > 1:
        plan = MemoryPlan({name: size * processes_sharing for name, size in plan.parts.items()}, plan.advice)
    if why := plan.refusal(device_bytes):
        raise JobTooLarge(why + (f" ({processes_sharing} processes share this machine's memory)"
                                 if processes_sharing > 1 else ""))


def check_policy_update_fits(method: str, config, base_model_dir: str, prompt_tokens: int, continuing: bool,
                             processes: int = 1) -> MemoryPlan:
    device, memory = this_device()
    plan = plan_for_method(shape_of(base_model_dir), method, config, prompt_tokens, continuing,
                           dtype=training_dtype(device), device=device)
    check_fits(plan, memory, processes if device == "cpu" else 1)
    return plan


def check_reward_training_fits(config, base_model_dir: str, processes: int = 1) -> MemoryPlan:
    device, memory = this_device()
    plan = plan_reward_training(shape_of(base_model_dir), config, dtype=training_dtype(device), device=device)
    check_fits(plan, memory, processes if device == "cpu" else 1)
    return plan


@dataclass(frozen=True)
class PlannedPeak:
    """One row of the settings page's table."""

    device: str
    gib: float
    fits: bool


def planned_peaks(method: str, config, base_model_dir: str) -> list[PlannedPeak]:
    """The run's policy update on the devices teams train on, and on this machine's CPU.
    Empty when the base model's config cannot be read."""
    try:
        shape = shape_of(base_model_dir)
    except (OSError, ValueError):
        return []
    rows = []
    for title, device, gib in PAGE_DEVICES:
        plan = plan_for_method(shape, method, config, PLANNED_PROMPT_TOKENS, dtype=training_dtype(device),
                               device=device)
        rows.append(PlannedPeak(title, plan.gib(), plan.total <= gib * GIB))
    plan = plan_for_method(shape, method, config, PLANNED_PROMPT_TOKENS, dtype=training_dtype("cpu"), device="cpu")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows.append(PlannedPeak(f"this machine's CPU, {ram / GIB:.0f} GiB", plan.gib(), plan.total <= ram))
    return rows
