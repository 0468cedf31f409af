"""Sampling through vLLM with the policy's LoRA adapter unmerged (a LoRARequest on the
base), for comparisons, evaluation and best-of-N on a GPU box (training/ml/engines.py).
The prompts are the same chat-templated token ids transformers samples from
(tokens.prompt_input_ids), the answers come back as generation.Sample with their token
ids as drawn, so the reward model scores what the policy produced. Only imported where
vllm is importable (vllm itself is imported inside); exercised by scripts/device_bench_methods.py on the GPU machine."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path

from training.ml.generation import Sample
from training.ml.loading import load_tokenizer, pick_device, precision_for
from training.ml.tokens import prompt_input_ids

VLLM_GPU_MEMORY_UTILIZATION = 0.3
"""Share of the GPU a vLLM engine reserves (TRL's colocate default), unless the
deployment says otherwise (PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION)."""


def sample_with_vllm(base_model_dir: Path | str, adapter_dir: Path | str | None,
                     conversations: Sequence[list[dict]], samples: int, config, precision=None,
                     on_batch: Callable[[int], None] | None = None,
                     gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION) -> list[list[Sample]]:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    resolved = precision_for(precision, pick_device())
    tokenizer = load_tokenizer(base_model_dir)
    lora = None
    engine_arguments = {}
    if adapter_dir is not None:
        import json

        rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"]
        lora = LoRARequest("policy", 1, str(adapter_dir))
        engine_arguments = {"enable_lora": True, "max_lora_rank": max(8, rank), "max_loras": 1}
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[resolved.name]
    llm = LLM(model=str(base_model_dir), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
              seed=config.seed, **engine_arguments)
    try:
        params = SamplingParams(n=samples, temperature=config.temperature, top_k=config.top_k or -1,
                                top_p=config.top_p or 1.0, max_tokens=config.max_new_tokens, seed=config.seed)
        prompts = [{"prompt_token_ids": prompt_input_ids(tokenizer, c)} for c in conversations]
        outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=True)
        answers = [[Sample(text=o.text, ended=o.finish_reason == "stop", num_tokens=len(o.token_ids),
                           token_ids=tuple(t for t in o.token_ids if t != tokenizer.eos_token_id))
                    for o in request.outputs] for request in outputs]
        if on_batch is not None:
            on_batch(len(answers))
        return answers
    finally:
        # A worker lives on after the job: give the engine's reservation back.
        del llm
        gc.collect()
        torch.cuda.empty_cache()
