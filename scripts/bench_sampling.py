"""Sampling benchmark (`make bench`): answers per second from the base policy with the
settings comparison jobs use, transformers' own sampling (the baseline: temperature,
top-k 50 and top-p warpers, softmax and `multinomial` over the whole vocabulary) against
PrefLoop's `iter_sample_batches` (the same distribution, drawn among the k best tokens:
training/ml/generation.py, NucleusDraw). Both run in this one process, alternating, on
the same prompts; the results replace the "Sampling" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Sampling (comparisons, evaluation, best-of-N)"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402


def transformers_sampling(model, tokenizer, conversations, samples: int, config) -> int:
    """The baseline: generate() sampling by itself, as iter_sample_batches did before."""
    import torch

    from training.ml.generation import chunks

    torch.manual_seed(config.seed)
    tokens = 0
    for batch in chunks(conversations, config.batch_size):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**encoded, do_sample=True, temperature=config.temperature, top_p=config.top_p,
                                    top_k=config.top_k, max_new_tokens=config.max_new_tokens,
                                    num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
        tokens += int((output[:, encoded["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
    return tokens


def prefloop_sampling(model, tokenizer, conversations, samples: int, config) -> int:
    from training.ml.generation import iter_sample_batches

    return sum(s.num_tokens + s.ended for batch in iter_sample_batches(model, tokenizer, conversations, samples, config)
               for group in batch for s in group)


def measure(model, tokenizer, conversations, samples: int, config, repeats: int, label: str) -> dict[str, float]:
    """Median generated tokens per second of each way, alternating on the same inputs."""
    ways = {"transformers": transformers_sampling, "PrefLoop": prefloop_sampling}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(repeats):
        for name, sample in ways.items():
            start = time.perf_counter()
            tokens = sample(model, tokenizer, conversations, samples, config)
            seconds = time.perf_counter() - start
            rates[name].append(tokens / seconds)
            print(f"{label}, repeat {repeat + 1}: {name}: {tokens} tokens in {seconds:.1f} s")
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt (a comparison's two)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tempfile

    import torch

    from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path
    from training.ml.generation import SamplingConfig
    from training.ml.loading import load_policy
    from training.ml.tiny_model import build_tiny_model

    starter = ROOT / "labeling" / "fixtures" / "starter_prompts.jsonl"
    rows = [json.loads(line) for line in starter.read_text().splitlines() if line.strip()]
    conversations = [row.get("messages") or [{"role": "user", "content": row["prompt"]}] for row in rows]
    results = []
    model, tokenizer = load_policy(args.model)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, top_k=50,
                            batch_size=args.batch_size, seed=0)
    results.append((f"`{os.path.relpath(args.model, ROOT)}`: {args.prompts} prompts × {args.samples} answers, "
                    f"{args.max_new_tokens} tokens, {args.batch_size} prompts per call (comparison jobs)",
                    measure(model, tokenizer, conversations[: args.prompts], args.samples, config, args.repeats,
                            "base model")))
    with tempfile.TemporaryDirectory() as scratch:  # the test suite's tiny model and its sampling
        tiny_dir = build_tiny_model(Path(scratch) / "tiny", load_gguf_tokenizer(smollm2_gguf_path()), output_scale=22)
        model, tokenizer = load_policy(tiny_dir)
        config = SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.95, top_k=50, batch_size=64, seed=0)
        results.append(("tiny random model (tests): 64 prompts × 4 answers, 16 tokens, 64 prompts per call",
                         measure(model, tokenizer, conversations[:64], 4, config, args.repeats, "tiny model")))

    lines = [SECTION, "", f"Command: `{command_line()}`", "", *machine_lines(),
             f"- Temperature 0.8 (tiny: 0.7), top-k 50, top-p 0.95; torch threads {torch.get_num_threads()}.",
             "", f"| case | transformers tokens/s | PrefLoop tokens/s | ratio (median of {args.repeats}) |",
             "|---|---|---|---|"]
    lines += [f"| {case} | {rate['transformers']:.0f} | {rate['PrefLoop']:.0f} | "
              f"**{rate['PrefLoop'] / rate['transformers']:.2f}×** |" for case, rate in results]
    lines += ["", "Baseline: transformers' `generate(do_sample=True)` with the same settings, in the same process, "
              "alternating. The draw is the same distribution (tests/test_generation.py checks it against "
              "transformers' warpers); transformers sorts and draws over the whole 49,152-token vocabulary for "
              "every row at every token, NucleusDraw only over the top 50. On the 135M model the forward pass "
              "is most of the cost, so the gain is modest; on a small model with many rows per call sampling "
              "itself was the cost."]
    replace_section(SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
