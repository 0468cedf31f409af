"""Sampling through vLLM with the policy's LoRA adapter unmerged (a LoRARequest on the
base), for comparisons, evaluation and best-of-N on a GPU box (training/ml/engines.py).
The prompts are the same chat-templated token ids transformers samples from
(tokens.prompt_input_ids), the answers come back as generation.Sample with their token
ids as drawn, so the reward model scores what the policy produced. vllm itself is
imported only when sampling; exercised by scripts/device_check.sh on the GPU machine."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from training.ml.generation import Sample, decode_sample
from training.ml.loading import load_tokenizer, pick_device, precision_for
from training.ml.tokens import prompt_input_ids

VLLM_GPU_MEMORY_UTILIZATION = 0.3
"""Share of the GPU a vLLM engine reserves (TRL's colocate default), unless the
deployment says otherwise (PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION)."""


def sample_with_vllm(base_model_dir: Path | str, adapter_dir: Path | str | None,
                     conversations: Sequence[list[dict]], samples: int, config, precision=None,
                     on_batch: Callable[[int], None] | None = None,
                     gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION) -> list[list[Sample]]:
    import os

    import torch

    # vLLM's V1 engine would start a child process, which a Celery prefork worker's
    # daemonic children may not do; in-process it runs in any worker.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    resolved = precision_for(precision, pick_device())
    tokenizer = load_tokenizer(base_model_dir)
    prompts = [prompt_input_ids(tokenizer, c) for c in conversations]
    lora = None
    engine_arguments = {}
    if adapter_dir is not None:
        rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"]
        lora = LoRARequest("policy", 1, str(adapter_dir))
        engine_arguments = {"enable_lora": True, "max_lora_rank": vllm_lora_rank(rank), "max_loras": 1}
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[resolved.name]
    # The context these prompts need, not the model's whole window (32k-128k), whose KV
    # cache would not fit the engine's share of the GPU. generation_config="vllm": stop
    # at the tokenizer's EOS only, as transformers sampling does (generation.py), not at
    # the other end tokens a model's generation_config lists.
    llm = LLM(model=str(base_model_dir), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
              seed=config.seed, max_model_len=max(map(len, prompts), default=1) + config.max_new_tokens,
              generation_config="vllm", **engine_arguments)
    try:
        params = SamplingParams(n=samples, temperature=config.temperature, top_k=config.top_k or -1,
                                top_p=config.top_p or 1.0, max_tokens=config.max_new_tokens, seed=config.seed,
                                stop_token_ids=[tokenizer.eos_token_id])
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, lora_request=lora,
                               use_tqdm=True)
        # Decoded as transformers' samples are: up to the first EOS, stripped.
        answers = [[decode_sample(torch.tensor(list(o.token_ids), dtype=torch.long), tokenizer,
                                  tokenizer.eos_token_id) for o in request.outputs] for request in outputs]
        if on_batch is not None:
            on_batch(len(answers))
        return answers
    finally:
        # A worker lives on after the job: give the engine's reservation back.
        del llm
        gc.collect()
        torch.cuda.empty_cache()


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The max_lora_rank values vLLM accepts."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of `rank`."""
    fitting = [allowed for allowed in VLLM_LORA_RANKS if allowed >= rank]
    if not fitting:
        raise ValueError(f"vLLM serves LoRA adapters of rank at most {VLLM_LORA_RANKS[-1]}, not {rank}")
    return fitting[0]
