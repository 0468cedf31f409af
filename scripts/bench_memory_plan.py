"""The memory plan against measured peaks: every method trains once, each in its own
process, on a random-initialised model of a real model's shape (built from its config,
no download: memory does not depend on the weights' values), and its peak RSS is set
beside what training/ml/memory_plan.py predicted for the same config before it ran.

    .venv/bin/python scripts/bench_memory_plan.py --shape smollm2-135m --dtype fp32
    python3 scripts/bench_memory_plan.py --shape qwen2.5-1.5b --dtype bf16 --gradient-checkpointing   # a GPU

Prints a markdown table (planned, measured, planned ÷ measured) for docs/benchmarks.md.
On the CPU the measured peak is the process's peak RSS; on a GPU, the caching
allocator's peak reservation (torch.cuda.max_memory_reserved), with the time of each
update and its sampled tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prompts(count: int) -> list[list[dict]]:
    lines = (ROOT / "labeling" / "fixtures" / "starter_prompts.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()][:count]
    return [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in records]


def build_models(shape_name: str, work: Path, tokenizer_dir: str | None = None,
                 dtype: str = "fp32") -> tuple[Path, Path]:
    """A random causal LM of the shape with SmolLM2's tokenizer (from its GGUF, or from
    `tokenizer_dir` where the GGUF package is not installed: the GPU machine), and a
    reward model of the same backbone (a whole sequence-classification model, as a full
    fine-tune publishes). Saved in `dtype`, as checkpoints of that precision are: a
    process's peak RSS counts the checkpoint's memory-mapped pages, which for an fp32
    file loaded into bf16 would be twice the weights it keeps."""
    policy, reward = work / f"policy-{dtype}", work / f"reward-{dtype}"
    if (policy / "config.json").is_file() and (reward / "config.json").is_file():
        return policy, reward
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from training.ml.memory_plan import KNOWN_SHAPES

    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path

        tokenizer = load_gguf_tokenizer(smollm2_gguf_path())
    values = dict(KNOWN_SHAPES[shape_name])
    config = AutoConfig.for_model(values.pop("model_type"), **values, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    config.num_labels = 1  # the reward model's one score
    for model, folder in ((AutoModelForCausalLM.from_config(config), policy),
                          (AutoModelForSequenceClassification.from_config(config), reward)):
        model.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    return policy, reward


def method_config(name: str, args):
    from training.ml.configs import field_specs
    from training.ml.methods import method_named

    method = method_named(name)
    fields = {spec.name for spec in field_specs(method.config_class)}
    shared = {"response_length": args.response_length, "max_completion_length": args.response_length,
              "max_new_tokens": args.response_length, "total_episodes": args.prompts}
    if args.batch_size:  # fewer sequences a step, for a large shape on a CPU
        shared.update(batch_size=args.batch_size, prompts_per_step=args.batch_size,
                      sampling_batch_size=args.batch_size, num_generations=2, ppo_epochs=args.ppo_epochs or 4)
    return method.config({key: value for key, value in shared.items() if key in fields})


def child(name: str, args) -> dict:
    """Train `name` once; its plan first, then the peak RSS of this process."""
    from training.ml.loading import PolicyStart, configure_torch_threads, load_tokenizer
    from training.ml.memory_plan import GIB, plan_for_method, shape_of_model_dir, vllm_reservation
    from training.ml.methods import TrainingInputs, method_named
    from training.ml.preference_pairs import PreferencePair
    from training.ml.reward_scoring import RewardModelRef
    from training.ml.tokens import answer_input_ids, prompt_input_ids
    from training.ml.vllm_sampling import VLLM_GPU_MEMORY_UTILIZATION

    configure_torch_threads(args.threads)
    work = Path(args.work_dir or ROOT / "var" / "bench-memory") / args.shape
    policy, reward = build_models(args.shape, work, args.tokenizer, args.dtype)
    conversations = prompts(args.prompts)
    answer = " ".join(["word"] * args.response_length)
    pairs = [PreferencePair(group=i, prompt=p, chosen=answer, rejected=answer + " no")
             for i, p in enumerate(conversations)]
    tokenizer = load_tokenizer(policy)
    prompt_tokens = max(len(prompt_input_ids(tokenizer, p)) for p in conversations)
    import torch

    method, config = method_named(name), method_config(name, args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    answer_tokens = max(len(answer_input_ids(tokenizer, a)) for pair in pairs for a in (pair.chosen, pair.rejected))
    plan = plan_for_method(shape_of_model_dir(policy), name, config, prompt_tokens, dtype=args.dtype,
                           gradient_checkpointing=args.gradient_checkpointing, device=device,
                           answer_tokens=answer_tokens, prompts=len(conversations),
                           quantization=args.frozen_quantization,
                           vllm_bytes=vllm_reservation(args.sampling_engine, VLLM_GPU_MEMORY_UTILIZATION,
                                                       torch.cuda.get_device_properties(0).total_memory
                                                       if device == "cuda" else 0))
    inputs = TrainingInputs(PolicyStart(policy), conversations, pairs,
                            RewardModelRef(policy, reward, 0.0, 1.0, quantization=args.frozen_quantization),
                            precision=args.dtype, gradient_checkpointing="on" if args.gradient_checkpointing else "off",
                            sampling_engine=args.sampling_engine, frozen_quantization=args.frozen_quantization)
    started = time.monotonic()
    result = method.train(inputs, work / f"out-{name}", config)
    seconds = time.monotonic() - started
    measured = (torch.cuda.max_memory_reserved() if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tokens = result.summary.get("generated_tokens") or result.examples * args.response_length
    return {"method": name, "device": device, "engine": args.sampling_engine, "quantization": args.frozen_quantization,
            "planned_gib": plan.total / GIB, "seconds": seconds,
            "measured_gib": measured / GIB, "tokens_per_second": tokens / seconds if seconds else None,
            "parts": {part: round(size / GIB, 3) for part, size in plan.parts.items()}}


def main() -> int:
    from training.ml.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--batch-size", type=int, help="every method's sequences a step (GRPO and RLOO: groups "
                                                       "of 2); default: each method's own")
    parser.add_argument("--ppo-epochs", type=int, help="with --batch-size: PPO's epochs over its batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sampling-engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--frozen-quantization", default="none", choices=["none", "nf4"])
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: SmolLM2's, from its GGUF)")
    parser.add_argument("--work-dir", help="where the random models are written (default var/bench-memory)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--keep-going", action="store_true", help="a method that fails is reported, not fatal")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0
    rows, failures = [], []
    for name in args.methods.split(","):
        run = subprocess.run([sys.executable, __file__, "--child", name, *sys.argv[1:]], cwd=ROOT,
                             capture_output=True, text=True)
        line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
        if run.returncode or line is None:
            print(run.stdout[-2000:], run.stderr[-4000:])
            if not args.keep_going:
                raise SystemExit(f"the {name} run failed")
            failures.append((name, (run.stderr.strip().splitlines() or ["no output"])[-1]))
            continue
        rows.append(json.loads(line.removeprefix("RESULT ")))
        print(rows[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "failures": failures}, indent=1))
    print("\n| Method | Device | Planned peak (GiB) | Measured peak (GiB) | Planned ÷ measured | Update (s) "
          "| Tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| `{row['method']}` | {row['device']} | {row['planned_gib']:.2f} | {row['measured_gib']:.2f} | "
              f"{row['planned_gib'] / row['measured_gib']:.2f} | {row['seconds']:.0f} | "
              f"{row['tokens_per_second'] or 0:.0f} |")
    for name, why in failures:
        print(f"| `{name}` | failed: {why} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
