"""Sampling engines: what draws a policy's answers. Comparisons, evaluation and
best-of-N sample through the run's engine (`sample_answers`), and with "vllm" the
trainers that sample their own rollouts through TRL (GRPO, RLOO, online DPO) do so in
TRL's vLLM colocate mode (`trl_rollout_arguments`). PPO's TRL trainer has no vLLM path:
its rollouts stay on transformers whatever the engine.

Peers in a registry, each saying whether it can run here and, where not, why: a setting
that cannot be honoured is refused with that reason (on the settings form, by
`setting_refusal`, and by the job before it loads anything, by `require_engine`),
never silently ignored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.ml.vllm_sampling import VLLM_GPU_MEMORY_UTILIZATION, sample_with_vllm


class EngineUnavailable(RuntimeError):
    """The run's sampling engine cannot run on this machine; the message says why and what to choose."""


@dataclass(frozen=True)
class SamplingEngine:
    name: str
    title: str
    package: str | None = None
    """A module that must be importable (None: nothing beyond the project's own)."""
    needs_cuda: bool = False
    install_hint: str = ""

    def installed(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def refusal(self, device=None) -> str | None:
        """Why this engine cannot sample here (None: it can). Without a device, only
        whether its package is installed (what a web process can tell about its workers)."""
        if not self.installed():
            return (f"sampling engine {self.name!r} needs the {self.package} package, which is not importable in "
                    f"this installation ({self.install_hint}); choose 'transformers'")
        if self.needs_cuda and device is not None and getattr(device, "type", device) != "cuda":
            return (f"sampling engine {self.name!r} samples on a CUDA GPU and this worker has none; "
                    "choose 'transformers'")
        return None


ENGINES: dict[str, SamplingEngine] = {
    engine.name: engine
    for engine in (
        SamplingEngine("transformers", "transformers (model.generate)"),
        SamplingEngine("vllm", "vLLM (with the LoRA adapter; GRPO, RLOO and online DPO in TRL's colocate mode)",
                       package="vllm", needs_cuda=True,
                       install_hint="pip install vllm on a CUDA machine, in the workers' environment"),
    )
}
DEFAULT_ENGINE = "transformers"


def engine_named(name: str) -> SamplingEngine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"sampling engine must be one of {', '.join(ENGINES)}, not {name!r}") from None


def setting_refusal(name: str) -> str | None:
    """Why a run cannot be set to engine `name` in this installation (None: it can)."""
    try:
        return engine_named(name).refusal()
    except ValueError as error:
        return str(error)


def require_engine(name: str, device) -> SamplingEngine:
    """The engine, or EngineUnavailable saying why it cannot run on `device`."""
    engine = engine_named(name)
    if (why := engine.refusal(device)) is not None:
        raise EngineUnavailable(why)
    return engine


def trl_rollout_arguments(name: str, gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION) -> dict[str, Any]:
    """What a TRL sampling trainer's config (GRPOConfig, RLOOConfig, OnlineDPOConfig)
    takes for engine `name`: nothing for transformers; vLLM colocated in the trainer's
    own process, sharing its GPU, for vllm."""
    if engine_named(name).name != "vllm":
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": gpu_memory_utilization}


def sample_answers(engine: str, base_model_dir: Path | str, adapter_dir: Path | str | None,
                   conversations: Sequence[list[dict]], samples: int, config, precision=None,
                   on_batch: Callable[[int], None] | None = None, device=None, loaded: tuple | None = None,
                   gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION) -> list:
    """`samples` answers (generation.Sample) to each conversation, grouped per conversation
    in order, from the base with its adapter, through `engine`. `loaded`: the policy's
    (model, tokenizer) where the caller holds them already (transformers samples with
    them; vLLM loads its own)."""
    from training.ml.loading import load_policy, pick_device

    device = device or pick_device()
    require_engine(engine, device)
    if engine == "vllm":
        return sample_with_vllm(base_model_dir, adapter_dir, conversations, samples, config, precision, on_batch,
                                gpu_memory_utilization)
    from training.ml.generation import iter_sample_batches

    model, tokenizer = loaded or load_policy(base_model_dir, adapter_dir, device, precision)
    done: list = []
    for batch in iter_sample_batches(model, tokenizer, conversations, samples, config):
        done.extend(batch)
        if on_batch is not None:
            on_batch(len(done))
    return done
