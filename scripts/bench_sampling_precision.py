"""Sampling in bf16, merged or not (issue 27 item 1): how far the answers people label
move from the trained policy when its LoRA adapter is merged into bf16 weights, as
sampling on CUDA did, against keeping it unmerged in fp32 beside a bf16 base (what
`load_policy` does now in bf16) and merging in fp32 before casting.

A LoRA adapter is trained on SmolLM2-135M-Instruct (SFT on chosen answers, PrefLoop's
own method); answers are sampled from the fp32 policy with the adapter unmerged (the
policy as trained) at temperature 1 without truncation, and for each answer the
log-probability under every variant is summed over its tokens (EOS included when it
ended): KL(policy ‖ variant) ≈ mean over answers of log π(a) − log π_variant(a), in nats
per answer (training/ml/divergence.py's estimator, all variants on the same answers).
KL(policy ‖ base) gives the scale: how far the adapter moved the policy at all.
The results replace the "Sampling in bf16: merged or not" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Sampling in bf16: merged or not (issue 27 item 1)"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402


def starter_conversations() -> list[list[dict]]:
    rows = [json.loads(line) for line in (ROOT / "labeling" / "fixtures" / "starter_prompts.jsonl").read_text()
            .splitlines() if line.strip()]
    return [row.get("messages") or [{"role": "user", "content": row["prompt"]}] for row in rows]


def train_adapter(model_dir: Path, conversations: list[list[dict]], out: Path, epochs: float, learning_rate: float):
    """A LoRA adapter (r=16, all linear layers) from SFT on chosen answers in a style the
    base does not have: it must move the policy for the measurement to mean anything."""
    from training.ml.loading import PolicyStart
    from training.ml.methods import METHODS, TrainingInputs
    from training.ml.preference_pairs import PreferencePair

    pairs = [PreferencePair(group=i, prompt=c, rejected="I don't know.",
                            chosen=f"Great question! In one sentence: {c[-1]['content'].rstrip('?.!')} comes down "
                                   "to patience, practice and a good night's sleep.")
             for i, c in enumerate(conversations)]
    method = METHODS["sft_chosen"]
    config = method.config({"batch_size": 8, "epochs": epochs, "learning_rate": learning_rate, "max_length": 256})
    result = method.train(TrainingInputs(start=PolicyStart(model_dir), pairs=pairs, precision="fp32"), out, config)
    return result


def variants(model_dir: Path, adapter: Path) -> dict:
    """name → model, all on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.ml.loading import load_policy

    def base(dtype):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)

    merged_in_fp32 = PeftModel.from_pretrained(base(torch.float32), adapter).merge_and_unload().to(torch.bfloat16)
    return {
        "fp32, adapter unmerged (the trained policy)": PeftModel.from_pretrained(base(torch.float32), adapter).eval(),
        "fp32, adapter merged": PeftModel.from_pretrained(base(torch.float32), adapter).merge_and_unload().eval(),
        "bf16, adapter merged into bf16 weights (sampling on CUDA before)":
            PeftModel.from_pretrained(base(torch.bfloat16), adapter).merge_and_unload().eval(),
        "bf16, merged in fp32 then cast": merged_in_fp32.eval(),
        "bf16 base, fp32 adapter unmerged (`load_policy` in bf16 now)":
            load_policy(model_dir, adapter, torch.device("cpu"), "bf16")[0],
        "fp32 base without the adapter (scale)": base(torch.float32).eval(),
    }


def answer_log_probs(model, prompt_ids: list[int], answers: list[list[int]], pad_id: int) -> list[float]:
    """Σ log p(answer tokens | prompt) of each answer, one right-padded batch."""
    import torch

    longest = max(len(a) for a in answers)
    ids = torch.full((len(answers), len(prompt_ids) + longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, answer in enumerate(answers):
        ids[row, : len(prompt_ids) + len(answer)] = torch.tensor(prompt_ids + answer)
        mask[row, : len(prompt_ids) + len(answer)] = 1
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, len(prompt_ids) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(2, ids[:, len(prompt_ids):, None])[..., 0]  # (batch, answer)
    return (log_probs * mask[:, len(prompt_ids):]).sum(-1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--train-prompts", type=int, default=48, help="SFT examples for the adapter")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    from training.ml.generation import SamplingConfig, iter_sample_batches
    from training.ml.loading import configure_torch_threads, load_tokenizer
    from training.ml.tokens import answer_input_ids, prompt_input_ids

    configure_torch_threads(args.threads)
    conversations = starter_conversations()
    train_on, measure_on = conversations[: args.train_prompts], conversations[-args.prompts:]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as scratch:
        adapter = Path(scratch) / "adapter"
        trained = train_adapter(args.model, train_on, adapter, args.epochs, args.learning_rate)
        losses = [entry["sft_chosen/loss"] for entry in trained.history if "sft_chosen/loss" in entry]
        print(f"adapter trained in {trained.seconds:.0f} s; losses {losses[0]:.3f} -> {losses[-1]:.3f}")
        models = variants(args.model, adapter)
        tokenizer = load_tokenizer(args.model)
        policy = next(iter(models.values()))
        config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                                batch_size=8, seed=0)
        differences = {name: [] for name in models}
        tokens = 0
        for start, batch in zip(range(0, len(measure_on), config.batch_size),
                                iter_sample_batches(policy, tokenizer, measure_on, args.samples, config), strict=False):
            for offset, samples in enumerate(batch):
                prompt_ids = prompt_input_ids(tokenizer, measure_on[start + offset])
                answers = [answer_input_ids(tokenizer, s.text, s.ended, s.token_ids) for s in samples]
                answers = [a for a in answers if a]
                tokens += sum(len(a) for a in answers)
                scores = {name: answer_log_probs(model, prompt_ids, answers, tokenizer.pad_token_id)
                          for name, model in models.items()}
                for name in models:
                    differences[name] += [p - q for p, q in zip(scores[next(iter(models))], scores[name],
                                                                 strict=True)]
            print(f"{len(differences[next(iter(models))])} answers, {time.monotonic() - started:.0f} s")
    answers = len(differences[next(iter(models))])

    def row(name: str) -> str:
        values = differences[name]
        mean = sum(values) / len(values)
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1) / len(values))
        return f"| {name} | {mean:.4f} ± {stderr:.4f} | {mean * answers / tokens:.5f} |"

    lines = [SECTION, "", f"Command: `{command_line()}`", "", *machine_lines(),
             f"- Policy: `{os.path.relpath(args.model, ROOT)}` with a LoRA adapter (r=16, α=32, all linear layers) "
             f"trained by `sft_chosen` on {len(train_on)} starter prompts, {args.epochs:g} epochs, lr "
             f"{args.learning_rate:g} (loss {losses[0]:.3f} → {losses[-1]:.3f} in {trained.seconds:.0f} s).",
             f"- {answers} answers ({tokens} tokens, EOS included) sampled from the fp32 unmerged policy at "
             f"temperature 1, no top-k/top-p, up to {args.max_new_tokens} new tokens, to {len(measure_on)} other "
             f"starter prompts × {args.samples}; every variant scores the same answers. "
             f"Total {time.monotonic() - started:.0f} s.",
             "", "| variant | KL(policy ‖ variant), nats per answer (± s.e.) | nats per token |", "|---|---|---|"]
    lines += [row(name) for name in list(models)[1:]]
    lines += ["", "The trained policy is the fp32 model with its adapter unmerged; the first row is the rounding "
              "noise of merging in fp32, the last how far the adapter moved the policy from the base at all. "
              "PrefLoop's sampling keeps the adapter unmerged in bf16 and fp16 and merges it only in fp32 "
              "(training/ml/loading.py `load_policy`)."]
    replace_section(SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
