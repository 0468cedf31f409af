"""Does PPO learn as much with the cheap value model? (`make bench`)

On SmolLM2 at the PPO benchmark's budget no value model moves the policy measurably, so
this asks the question where PPO does learn within a minute: the keyword world
(training/ml/keyword_world.py: the steerable tiny policy, a keyword oracle, a reward
model trained on its judgements). The same PPO update runs with each value model:
  full — a trainable copy of the reward model (TRL's own arrangement);
  lora — a frozen copy learning a LoRA adapter and its head;
  head — a head on the reward model's frozen features (PrefLoop's default);
over several seeds, and each trained policy is measured on the world's prompts (fixed
sampling seed): the oracle's keyword rate and the reward model's score, against the base.
Results replace the "PPO value models" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench-ppo-value"
SECTION = "## PPO value models (issue 13, item 2)"
VALUE_MODELS = ("full", "lora", "head")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

# The policy-method tests' PPO settings for this world (tests/test_policy_methods.py).
SETTINGS = {"batch_size": 16, "response_length": 16, "learning_rate": 2e-3, "total_episodes": 192}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    import shutil

    from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path
    from training.ml.keyword_world import PROMPTS, build_keyword_world, keyword_samples
    from training.ml.loading import PolicyStart
    from training.ml.methods import TrainingInputs, method_named
    from training.ml.reward_scoring import RewardModelRef, RewardScorer

    shutil.rmtree(WORK, ignore_errors=True)
    world = build_keyword_world(WORK, load_gguf_tokenizer(smollm2_gguf_path()))
    scorer = RewardScorer.load(world.policy_dir, world.rm_dir, world.rm.reward_mean, world.rm.reward_std)

    def measure(adapter: Path | None) -> tuple[float, float]:
        samples = keyword_samples(world.policy_dir, adapter)
        rate = sum(world.word in text.split() for _, text, _, _ in samples) / len(samples)
        return rate, float(scorer.score(samples).mean())

    base_rate, base_score = measure(None)
    ppo = method_named("ppo")
    inputs = TrainingInputs(start=PolicyStart(world.policy_dir), prompts=PROMPTS,
                            reward_model=RewardModelRef(world.policy_dir, world.rm_dir, world.rm.reward_mean,
                                                        world.rm.reward_std))
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VALUE_MODELS}
    for seed in range(args.seeds):
        for name in VALUE_MODELS:
            out = WORK / f"ppo-{name}-{seed}"
            started = time.monotonic()
            ppo.train(inputs, out, ppo.config({**SETTINGS, "value_model": name, "seed": seed}))
            seconds = time.monotonic() - started
            rate, score = measure(out)
            results[name].append((rate, score, seconds))
            print(f"seed {seed} {name}: keyword rate {base_rate:.3f} -> {rate:.3f}, "
                  f"reward {base_score:+.3f} -> {score:+.3f}, {seconds:.0f} s", flush=True)

    from benchmark_report import command_line, machine_lines, replace_section

    def spread(values: list[float], base: float = 0.0) -> str:
        gains = [v - base for v in values]
        if len(gains) == 1:
            return f"{gains[0]:+.3f}"
        return f"{statistics.mean(gains):+.3f} ± {statistics.stdev(gains):.3f}"

    rows = [f"| `{name}` | {spread([r for r, _, _ in runs], base_rate)} "
            f"| {spread([s for _, s, _ in runs], base_score)} "
            f"| {statistics.mean(t for _, _, t in runs):.0f} |" for name, runs in results.items()]
    per_seed = [f"| {seed} | " + " | ".join(f"{results[name][seed][0]:.3f} / {results[name][seed][1]:+.3f}"
                                            for name in VALUE_MODELS) + " |" for seed in range(args.seeds)]
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}` (part of `make bench`).", "",
        *machine_lines(),
        f"- World: the steerable tiny policy, the oracle's keyword \"{world.word}\", a reward model trained on "
        f"{len(world.judged)} of its judgements (held-out accuracy {world.rm.heldout_accuracy}). PPO settings: "
        f"{SETTINGS}, the rest PrefLoop's defaults; {args.seeds} seeds (the seed sets sampling and initialization).",
        f"- Base policy: keyword rate {base_rate:.3f}, reward-model score {base_score:+.3f} (normalized) on the "
        f"world's {len(PROMPTS)} prompts × 4 samples, fixed sampling seed.",
        "",
        "| value model | keyword-rate gain (mean ± sd over seeds) | reward-score gain "
        f"| seconds per `ppo.train` ({SETTINGS['total_episodes'] // SETTINGS['batch_size']} updates) |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "Per seed (keyword rate / reward score after the update):",
        "",
        "| seed | " + " | ".join(f"`{name}`" for name in VALUE_MODELS) + " |",
        "| --- |" + " --- |" * len(VALUE_MODELS),
        *per_seed,
    ])
    replace_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
