#!/usr/bin/env bash
# Issue 27's checks that need a GPU, as one short script for the lent GPU machine
# (docs/benchmarks.md, "Memory plan" and "On a GPU"). Run from the repository root there:
#
#   bash scripts/device_check.sh          # writes its results under $OUT (var/device-out here)
#
# What it runs, each method once on a random-initialised model of Qwen2.5-1.5B's shape
# (no download; memory and speed do not depend on the weights' values), in bf16 with
# gradient checkpointing, the run settings a team would use on one H100:
#   1. every method with transformers sampling: time, sampled tokens/s, the caching
#      allocator's peak reservation against the memory plan's prediction;
#   2. the same with frozen_quantization=nf4 (bitsandbytes 4-bit reward model and base);
#   3. the same with sampling_engine=vllm, where vllm is importable there (GRPO, RLOO
#      and online DPO in TRL's colocate mode, best-of-N through vLLM with the adapter).
#
# The machine has torch, transformers, peft and accelerate, not TRL, datasets or
# bitsandbytes: those travel as wheels for its Python 3.12 in .whl/ (made by the
# commands in docs/benchmarks.md), with SmolLM2's tokenizer files in
# .device-carry/tokenizer; the call names both in `carry`. vLLM's wheel (~400 MB) is over
# what a call may carry, so step 3 runs only on a machine that has vllm installed.
set -uo pipefail
OUT=${OUT:-var/device-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"

bench=(python3 scripts/bench_memory_plan.py --shape qwen2.5-1.5b --dtype bf16 --gradient-checkpointing
       --prompts 8 --response-length 64 --tokenizer .device-carry/tokenizer --work-dir /tmp/bench-memory
       --keep-going)
"${bench[@]}" --json "$OUT/bf16.json" 2>&1 | tee "$OUT/bf16.log"
if python3 -c "import bitsandbytes" 2>/dev/null; then
    "${bench[@]}" --frozen-quantization nf4 --json "$OUT/nf4.json" 2>&1 | tee "$OUT/nf4.log"
else
    echo "bitsandbytes is not importable here: no nf4 rows" | tee "$OUT/nf4.log"
fi
if python3 -c "import vllm" 2>/dev/null; then
    "${bench[@]}" --sampling-engine vllm --methods grpo,rloo,online_dpo,best_of_n --json "$OUT/vllm.json" 2>&1 \
        | tee "$OUT/vllm.log"
else
    echo "vllm is not importable here (its wheel is over the 64 MiB a call may carry): no vLLM rows" \
        | tee "$OUT/vllm.log"
fi
