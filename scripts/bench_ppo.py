"""PPO round benchmark (`make bench`): SmolLM2-135M-Instruct, batch 8, 64 new tokens.

Runs one PPO round twice, each in its own process so peak memory is its own:
  prefloop  — `training.ml.methods.ppo.train`, what the `gpu` worker runs (LoRA policy,
              normalized reward head, value model a head on the reward model's frozen
              features, vocabulary logits for the answer's positions only);
  trl       — the same settings written directly against `trl.experimental.ppo.PPOTrainer`
              (value model a full trainable copy of the reward model).
Reports wall time, rollout tokens/s and peak memory of each, and their ratio; then a third
process samples the base policy and both trained policies on held-out prompts and scores
them with the reward model, so the reward each round gained is compared too. On a CUDA
machine it runs there (and says so). Results replace the "PPO round" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench-ppo"
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
REWARD_DIR = WORK / "reward-model"
ADAPTERS = {"prefloop": WORK / "prefloop-policy", "trl": WORK / "trl-policy"}
SECTION = "## PPO round (issue 4)"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def prompts(count: int) -> list[list[dict]]:
    lines = (ROOT / "labeling" / "fixtures" / "starter_prompts.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[:count]]
    return [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in records]


def prepare_reward_model() -> None:
    """A reward model to score with: the base backbone with a fresh score head. Its
    quality does not matter for speed; its shape and cost are the real ones."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from training.ml.base_model import prepare_base_model
    from training.ml.reward_loading import load_reward_tokenizer

    prepare_base_model(BASE_MODEL_DIR, convert_smollm2_if_missing=True)
    if (REWARD_DIR / "config.json").is_file():
        return
    tokenizer = load_reward_tokenizer(BASE_MODEL_DIR)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(BASE_MODEL_DIR, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(REWARD_DIR)
    tokenizer.save_pretrained(REWARD_DIR)


def run_prefloop(args) -> dict:
    from training.ml.loading import PolicyStart
    from training.ml.methods import TrainingInputs, method_named
    from training.ml.reward_scoring import RewardModelRef

    # The settings of the plain-TRL run below, so the ratio compares the glue only.
    ppo = method_named("ppo")
    config = ppo.config({"batch_size": args.batch_size, "response_length": args.response_length,
                         "total_episodes": args.episodes, "learning_rate": 1e-4})
    inputs = TrainingInputs(start=PolicyStart(BASE_MODEL_DIR), prompts=prompts(args.prompts),
                            reward_model=RewardModelRef(BASE_MODEL_DIR, REWARD_DIR, 0.0, 1.0))
    result = ppo.train(inputs, ADAPTERS["prefloop"], config)
    kl = [h["ppo/kl"] for h in result.history if "ppo/kl" in h]
    scores = [h["ppo/reward"] for h in result.history if "ppo/reward" in h]
    return {"seconds": result.seconds, "episodes": result.examples, "final_kl": kl[-1] if kl else None,
            "scores": scores}


def run_trl(args) -> dict:
    """The same round, as a TRL user would write it without PrefLoop."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL_DIR, padding_side="left")
    tokenizer.pad_token = "<|endoftext|>"  # distinct from EOS, as PPO needs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = AutoModelForCausalLM.from_pretrained(BASE_MODEL_DIR).to(device)
    reward = AutoModelForSequenceClassification.from_pretrained(REWARD_DIR, num_labels=1).to(device)
    value = copy.deepcopy(reward)
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"]
           for p in prompts(args.prompts)]
    config = PPOConfig(
        output_dir=str(WORK / "trl-out"), per_device_train_batch_size=args.batch_size,
        local_rollout_forward_batch_size=args.batch_size, total_episodes=args.episodes,
        response_length=args.response_length, temperature=0.7, learning_rate=1e-4, kl_coef=0.05,
        missing_eos_penalty=1.0, stop_token="eos", num_sample_generations=0, save_strategy="no",
        report_to=[], use_cpu=device == "cpu", seed=0,
    )
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        value_model=value, train_dataset=Dataset.from_dict({"input_ids": ids}),
        peft_config=LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, target_modules="all-linear"),
    )
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trainer.policy_model.save_pretrained(ADAPTERS["trl"])
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    return {"seconds": seconds, "episodes": trainer.state.episode, "final_kl": None, "scores": scores}


def evaluate(args) -> dict:
    """Reward-model scores of samples from the base policy and each trained one on prompts
    no round trained on (the same prompts, sampling seed and settings for all three), and
    each trained policy's gain over the base with a 95% bootstrap interval over prompts."""
    import random

    import torch

    from training.ml.generation import SamplingConfig, iter_sample_batches
    from training.ml.loading import load_policy
    from training.ml.reward_scoring import RewardScorer

    held_out = prompts(args.prompts + args.eval_prompts)[args.prompts:]
    scorer = RewardScorer.load(BASE_MODEL_DIR, REWARD_DIR, 0.0, 1.0)
    config = SamplingConfig(max_new_tokens=args.response_length, temperature=0.7, top_p=1.0, top_k=0,
                            batch_size=8, seed=1234)
    per_prompt = {}
    for name, adapter in {"base": None, **ADAPTERS}.items():
        model, tokenizer = load_policy(BASE_MODEL_DIR, adapter)
        samples = [(held_out[i], s.text, s.ended, s.token_ids) for i, group in enumerate(
            g for batch in iter_sample_batches(model, tokenizer, held_out, 2, config) for g in batch) for s in group]
        rewards = scorer.score(samples)
        per_prompt[name] = rewards.view(len(held_out), -1).mean(1).tolist()
        del model
    rng = random.Random(0)

    def gain(name: str) -> list[float]:
        diffs = [a - b for a, b in zip(per_prompt[name], per_prompt["base"], strict=True)]
        draws = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(2000))
        return [sum(diffs) / len(diffs), draws[49], draws[1949]]

    return {"mean": {name: sum(v) / len(v) for name, v in per_prompt.items()},
            "gain": {name: gain(name) for name in ADAPTERS}, "prompts": len(held_out), "torch": torch.__version__}


def child(args) -> None:
    result = {"prefloop": run_prefloop, "trl": run_trl, "evaluate": evaluate}[args.child](args)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=16, help="rollouts in the round (16 = two PPO updates)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts the rounds draw from")
    parser.add_argument("--eval-prompts", type=int, default=32,
                        help="held-out prompts the trained policies are scored on")
    parser.add_argument("--child", choices=["prefloop", "trl", "evaluate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    prepare_reward_model()
    results = {}
    for name in ("trl", "prefloop", "evaluate"):
        run = subprocess.run([sys.executable, __file__, "--child", name, *sys.argv[1:]], cwd=ROOT,
                             capture_output=True, text=True)
        line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
        if run.returncode or line is None:
            print(run.stdout[-3000:], run.stderr[-3000:])
            raise SystemExit(f"the {name} run failed")
        results[name] = json.loads(line.removeprefix("RESULT "))
        print(name, results[name], flush=True)

    from benchmark_report import command_line, machine_lines, replace_section

    def score_path(r: dict) -> str:
        return " → ".join(f"{score:.3f}" for score in r["scores"]) or "–"

    def tokens_per_second(r: dict) -> float:
        return r["episodes"] * args.response_length / r["seconds"]

    ours, plain, scored = results["prefloop"], results["trl"], results["evaluate"]

    def gained(name: str) -> str:
        mean, low, high = scored["gain"][name]
        return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"

    rows = [
        ("Wall time of the round (s)", f"{ours['seconds']:.1f}", f"{plain['seconds']:.1f}"),
        ("Rollout tokens/s (episodes × new tokens / wall time)", f"{tokens_per_second(ours):.1f}",
         f"{tokens_per_second(plain):.1f}"),
        ("Peak memory of the process (GiB RSS)", f"{ours['peak_rss_gib']:.2f}", f"{plain['peak_rss_gib']:.2f}"),
        ("Reward-model score per PPO update (mean of the rollout batch, first → last)", score_path(ours),
         score_path(plain)),
        (f"Reward-model score on {scored['prompts']} held-out prompts (base policy: {scored['mean']['base']:.3f})",
         f"{scored['mean']['prefloop']:.3f}", f"{scored['mean']['trl']:.3f}"),
        ("Reward gained by the round on them (trained − base, 95% bootstrap interval over prompts)",
         gained("prefloop"), gained("trl")),
    ]
    if "peak_gpu_gib" in ours:
        rows.append(("Peak GPU memory (GiB)", f"{ours['peak_gpu_gib']:.2f}", f"{plain['peak_gpu_gib']:.2f}"))
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}` (part of `make bench`).", "",
        *machine_lines(),
        f"- Settings: SmolLM2-135M-Instruct, LoRA r=16 policy, batch {args.batch_size}, "
        f"{args.response_length} new tokens, {ours['episodes']} episodes ({ours['episodes'] // args.batch_size} "
        "PPO updates of 4 epochs), fp32, learning rate 1e-4. Value model: PrefLoop trains a linear head on the "
        "reward model's frozen features (`value_model = \"head\"`, the default) and computes vocabulary logits "
        "for the answer's positions only; plain TRL trains a whole 135M copy of the reward model and computes "
        "logits everywhere. The reward model is the base backbone with a random head, the same in both: an "
        "objective to climb, not a good one. Rollout scores include PPO's missing-EOS penalty (−1 for an answer "
        "that never ends); held-out scores are the reward model's alone. Held-out scoring: 2 samples per prompt, "
        "temperature 0.7, the same seed for all three policies.",
        "",
        "| Metric | PrefLoop round | plain TRL PPOTrainer |", "| --- | --- | --- |",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
        "",
        f"PrefLoop / plain TRL wall-time ratio: **{ours['seconds'] / plain['seconds']:.2f}** "
        f"(PrefLoop's round {plain['seconds'] / ours['seconds']:.2f}× as fast).",
    ])
    replace_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
