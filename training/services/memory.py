"""Will a job fit? The memory plan (training/ml/memory_plan.py) of a policy update or a
reward-model training on this worker's device, checked before the job loads anything,
and shown on the run's settings page for the devices teams train on."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from training.ml.configs import ConfigError
from training.ml.engines import DEFAULT_ENGINE, require_engine
from training.ml.memory_plan import (
    GIB,
    WORKLOADS,
    JobData,
    MemoryPlan,
    ModelShape,
    analytic_shape,
    plan_for_method,
    plan_reward_training,
    vllm_reservation,
)
from training.ml.methods import method_named
from training.ml.quantization import require_quantization
from training.models import Run

PLANNED_PROMPT_TOKENS = 128
"""Prompt length a settings page plans for (a job plans for its own longest prompt)."""
PAGE_DEVICES = (("CUDA, 24 GB", "cuda", 24), ("CUDA, 48 GB", "cuda", 48), ("CUDA, 80 GB", "cuda", 80))


class JobTooLarge(RuntimeError):
    """The job's planned peak exceeds its device's memory; the message names what to change."""


@functools.lru_cache(maxsize=32)
def shape_of(base_model_dir: str, torch_allowed: bool = True) -> ModelShape | None:
    """From the model's config.json alone, once per process: by arithmetic for the
    architectures it knows, else (where torch may be imported: a worker) built on the
    meta device. None where neither can tell."""
    values = json.loads((Path(base_model_dir) / "config.json").read_text(encoding="utf-8"))
    if (shape := analytic_shape(values)) is not None or not torch_allowed:
        return shape
    from training.ml.memory_plan import shape_of_model_dir

    return shape_of_model_dir(base_model_dir)


def this_device():
    """The device a job here trains on (training/ml/loading.py's choice), and its memory in
    bytes: a GPU's own, or the machine's RAM for CPU processes."""
    import torch

    from training.ml.loading import pick_device

    device = pick_device()
    if device.type == "cuda":
        return device, torch.cuda.get_device_properties(device).total_memory
    return device, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolved_setup(precision: str | None, gradient_checkpointing: str | None, device) -> tuple[str, bool]:
    """What a job's pinned precision and checkpointing settings mean on `device`, as the
    trainers resolve them (training/ml/precision.py, methods/base.py)."""
    from training.ml.methods.base import gradient_checkpointing_on
    from training.ml.precision import resolve_precision

    return resolve_precision(precision, device).name, gradient_checkpointing_on(gradient_checkpointing, device)


def check_fits(plan: MemoryPlan, device_bytes: int, processes_sharing: int = 1) -> None:
    """Refuse a job whose plan exceeds the device. The CPU processes of one launch share
    the machine's memory, each holding its own models."""
    if processes_sharing > 1:
        plan = MemoryPlan({name: size * processes_sharing for name, size in plan.parts.items()}, plan.advice,
                          plan.apart)
    if why := plan.refusal(device_bytes):
        raise JobTooLarge(why + (f" ({processes_sharing} processes share this machine's memory)"
                                 if processes_sharing > 1 else ""))


def readable_shape(base_model_dir: str) -> ModelShape | None:
    """None where the model's config cannot be read: loading the model then fails with
    its own error, which says more than a plan could."""
    try:
        return shape_of(base_model_dir)
    except (OSError, ValueError):
        return None


def check_policy_update_fits(method: str, config, base_model_dir: str, prompt_tokens: int, continuing: bool,
                             precision: str | None = None, gradient_checkpointing: str | None = None,
                             processes: int = 1, answer_tokens: int | None = None,
                             prompts: int | None = None, sampling_engine: str = DEFAULT_ENGINE,
                             quantization: str | None = None) -> MemoryPlan | None:
    """Also refuses, first, a sampling engine or a quantization this worker cannot run
    (EngineUnavailable, QuantizationUnavailable: each says why and what to choose)."""
    device, memory = this_device()
    if samples_through_engine(method, config):  # DPO or SFT never sample: any engine is fine for them
        require_engine(sampling_engine, device)
    quantization = require_quantization(quantization, device)
    if (shape := readable_shape(base_model_dir)) is None:
        return None
    dtype, checkpointing = resolved_setup(precision, gradient_checkpointing, device)
    plan = plan_for_method(shape, method, config, prompt_tokens, continuing, dtype=dtype,
                           gradient_checkpointing=checkpointing, device=device.type,
                           answer_tokens=answer_tokens, prompts=prompts, quantization=quantization,
                           vllm_bytes=vllm_reservation(sampling_engine, settings.PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION,
                                                       memory))
    check_fits(plan, memory, processes if device.type == "cpu" else 1)
    return plan


def check_reward_training_fits(config, base_model_dir: str, precision: str | None = None,
                               processes: int = 1) -> MemoryPlan | None:
    if (shape := readable_shape(base_model_dir)) is None:
        return None
    device, memory = this_device()
    dtype, _ = resolved_setup(precision, "off", device)  # reward models train without checkpointing
    plan = plan_reward_training(shape, config, dtype=dtype, device=device.type)
    check_fits(plan, memory, processes if device.type == "cpu" else 1)
    return plan


def samples_through_engine(method: str, config) -> bool:
    return WORKLOADS[method](config, JobData()).engine_samples if method in WORKLOADS else True


@dataclass(frozen=True)
class PlannedPeak:
    """One row of the run page's table."""

    device: str
    precision: str
    checkpointing: bool
    gib: float
    fits: bool


def planned_peaks(run: Run) -> list[PlannedPeak]:
    """The run's policy update, as its settings stand, on the GPUs teams train on (taken
    to be of compute capability 8.0 or newer, where auto means bf16) and on this
    machine's CPU. Empty where the base model's architecture is not one the page can
    size by arithmetic (a worker builds any on the meta device), or the settings do not
    make a config."""
    import torch

    from training.ml.methods.base import gradient_checkpointing_on
    from training.ml.precision import PrecisionError, resolve_precision

    try:
        shape = shape_of(run.base_model_dir, torch_allowed=False)
        method = method_named(run.method)
        config = method.config(run.method_config)
    except (OSError, ValueError, KeyError, ConfigError):
        return []
    if shape is None:
        return []
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows = []
    for title, kind, memory in (*PAGE_DEVICES, (f"this machine's CPU, {ram / GIB:.0f} GiB", "cpu", ram / GIB)):
        device = torch.device(kind)
        try:
            dtype = resolve_precision(run.precision, device, capability=lambda _: (8, 0)).name
        except PrecisionError:  # fp16 on a CPU: no row to show
            continue
        checkpointing = gradient_checkpointing_on(run.gradient_checkpointing, device)
        on_gpu = kind == "cuda"  # vLLM and 4-bit are refused on a CPU worker: no row plans them there
        share = settings.PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION
        plan = plan_for_method(shape, method.name, config, PLANNED_PROMPT_TOKENS, dtype=dtype,
                               gradient_checkpointing=checkpointing, device=kind,
                               quantization=run.frozen_quantization if on_gpu else "none",
                               vllm_bytes=vllm_reservation(run.sampling_engine, share, memory * GIB) if on_gpu else 0)
        rows.append(PlannedPeak(title, dtype, checkpointing, plan.gib(), plan.total <= memory * GIB))
    return rows
