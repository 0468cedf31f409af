"""Policy-update methods side by side (`make bench`): what each costs and how far it moves.

Every method in the registry (training/ml/methods) trains once on SmolLM2-135M-Instruct
from the same start (the base model), with the same reward model, the same preference
pairs, the same training prompts, the same answer length and seed, each in its own
process so its peak memory is its own. Then every policy (and the base, as the
baseline row) is measured the same way on held-out prompts:

- reward-model score of its answers (normalized; mean and 95% interval over answers);
- answer length and share of answers that end, the labels' own criterion (below);
- KL to the base (training/ml/divergence.py, nats per answer, sampled at T=1).

The labels come from an oracle, as a person's would: of two base-model answers to a
prompt, prefer the shorter, and no apology (labeling/oracles.py). The reward model trains
on them with PrefLoop's default settings. The reward-model score is the quantity the RL
methods optimize, so it measures optimization, not quality; the experiments of issue 10
judge quality with a hidden gold reward. Results replace the "Policy-update methods"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench-methods"
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
SECTION = "## Policy-update methods (issue 9)"
ORACLE = "shorter_no_apology"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def all_prompts() -> list[list[dict]]:
    lines = (ROOT / "labeling" / "fixtures" / "starter_prompts.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in records]


def split_prompts(args) -> tuple[list, list]:
    """Training prompts first, held-out prompts from the end: never the same."""
    prompts = all_prompts()
    if args.prompts + args.eval_prompts > len(prompts):
        raise SystemExit(f"only {len(prompts)} starter prompts")
    return prompts[: args.prompts], prompts[-args.eval_prompts :]


def prepare_labels_and_reward_model(args) -> dict:
    """Sample base answers, label every pair by the oracle, train the reward model once
    (cached in var/bench-methods/ across runs with the same settings)."""
    from labeling.oracles import oracle_named
    from training.ml.base_model import prepare_base_model
    from training.ml.generation import SamplingConfig, iter_sample_batches
    from training.ml.loading import load_policy, seed_everything
    from training.ml.preference_pairs import PreferencePair
    from training.ml.reward_training import RewardTrainingConfig, train_reward_model

    prepare_base_model(BASE_MODEL_DIR, convert_smollm2_if_missing=True)
    key = {"prompts": args.prompts, "answers": args.answers, "length": args.response_length, "oracle": ORACLE}
    ready = WORK / "reward-model.json"
    if ready.is_file() and json.loads(ready.read_text())["key"] == key:
        return json.loads(ready.read_text())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    seed_everything(0)
    train_prompts, _ = split_prompts(args)
    model, tokenizer = load_policy(BASE_MODEL_DIR)
    config = SamplingConfig(max_new_tokens=args.response_length, temperature=0.8, seed=0)
    answers = [group for batch in iter_sample_batches(model, tokenizer, train_prompts, args.answers, config)
               for group in batch]
    del model
    oracle = oracle_named(ORACLE)
    pairs = []
    for index, (prompt, group) in enumerate(zip(train_prompts, answers, strict=True)):
        for a, b in itertools.combinations(group, 2):
            if oracle(a.text) == oracle(b.text):
                continue  # the oracle has no preference
            chosen, rejected = (a, b) if oracle(a.text) > oracle(b.text) else (b, a)
            pairs.append(PreferencePair(index, prompt, chosen.text, rejected.text, None, chosen.ended,
                                        rejected.ended, chosen.token_ids, rejected.token_ids))
    normalization = [(prompt, s.text, s.ended, s.token_ids)
                     for prompt, group in zip(train_prompts, answers, strict=True) for s in group]
    started = time.monotonic()
    result = train_reward_model(pairs, BASE_MODEL_DIR, WORK / "reward-model", RewardTrainingConfig(ensemble_size=0),
                                normalization_samples=normalization)
    (WORK / "pairs.json").write_text(json.dumps([
        {"group": p.group, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
         "chosen_ended": p.chosen_ended, "rejected_ended": p.rejected_ended,
         "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)} for p in pairs]))
    info = {"key": key, "pairs": len(pairs), "train_pairs": result.train_pairs, "accuracy": result.heldout_accuracy,
            "mean": result.reward_mean, "std": result.reward_std, "seconds": time.monotonic() - started}
    ready.write_text(json.dumps(info))
    return info


def method_config(name: str, args):
    """Each method's defaults, with the shared budget: answer length, one pass over the
    prompts or pairs, and one learning rate for every LoRA policy (the defaults differ
    from method to method and are tuned for long runs, not for a few steps)."""
    from training.ml.configs import field_specs
    from training.ml.methods import method_named

    method = method_named(name)
    fields = {spec.name for spec in field_specs(method.config_class)}
    shared = {"response_length": args.response_length, "max_completion_length": args.response_length,
              "max_new_tokens": args.response_length, "total_episodes": args.prompts,
              **({"learning_rate": args.learning_rate} if args.learning_rate else {})}
    return method.config({key: value for key, value in shared.items() if key in fields})


def train_and_measure(name: str, args) -> dict:
    """In a child process: train `name` (unless "base"), then measure its policy."""
    import torch

    from training.ml.configs import config_to_dict
    from training.ml.divergence import sampled_kl
    from training.ml.generation import SamplingConfig, iter_sample_batches
    from training.ml.loading import PolicyStart, configure_torch_threads, load_policy
    from training.ml.methods import TrainingInputs, method_named
    from training.ml.preference_pairs import PreferencePair
    from training.ml.reward_scoring import RewardModelRef, RewardScorer

    configure_torch_threads(args.threads)
    info = json.loads((WORK / "reward-model.json").read_text())
    train_prompts, eval_prompts = split_prompts(args)
    reward = RewardModelRef(BASE_MODEL_DIR, WORK / "reward-model", info["mean"], info["std"])
    result: dict = {"method": name}
    adapter = None
    if name != "base":
        method = method_named(name)
        pairs = [PreferencePair(row["group"], row["prompt"], row["chosen"], row["rejected"], None,
                                row["chosen_ended"], row["rejected_ended"], tuple(row["chosen_ids"]),
                                tuple(row["rejected_ids"])) for row in json.loads((WORK / "pairs.json").read_text())]
        config = method_config(name, args)
        adapter = WORK / f"policy-{name}-{args.child_precision}"
        shutil.rmtree(adapter, ignore_errors=True)
        started = time.monotonic()
        trained = method.train(TrainingInputs(PolicyStart(BASE_MODEL_DIR), train_prompts, pairs, reward,
                                              precision=args.child_precision), adapter, config)
        # Timed around the whole call (loading the policy, reference, reward and value
        # models included): what a job costs, the same way for every method.
        result.update(seconds=time.monotonic() - started, trainer_seconds=trained.seconds,
                      examples=trained.examples, config=config_to_dict(config))
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if torch.cuda.is_available():
            result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30

    policy, tokenizer = load_policy(BASE_MODEL_DIR, adapter)
    sampling = SamplingConfig(max_new_tokens=args.response_length, temperature=0.7, seed=1)
    answers = [(prompt, sample) for batch_prompts, batch in zip(
        [eval_prompts[i : i + sampling.batch_size] for i in range(0, len(eval_prompts), sampling.batch_size)],
        iter_sample_batches(policy, tokenizer, eval_prompts, args.eval_answers, sampling), strict=True)
        for prompt, group in zip(batch_prompts, batch, strict=True) for sample in group]
    scorer = RewardScorer.load(BASE_MODEL_DIR, reward.weights_dir, reward.mean, reward.std)
    scores = scorer.score([(prompt, s.text, s.ended, s.token_ids) for prompt, s in answers]).tolist()
    del scorer
    result["score"] = interval(scores)
    result["ended"] = interval([float(s.ended) for _, s in answers])
    result["tokens"] = interval([float(s.num_tokens) for _, s in answers])
    reference, _ = load_policy(BASE_MODEL_DIR)
    kl = sampled_kl(policy, reference, tokenizer, eval_prompts, samples_per_prompt=2,
                    max_new_tokens=args.response_length, seed=2)
    result["kl"] = {"mean": kl.mean, "half_width": 1.96 * kl.stderr, "n": kl.answers}
    return result


def interval(values: list[float]) -> dict:
    """Mean and the half-width of a normal 95% interval over independent answers."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return {"mean": mean, "half_width": 1.96 * math.sqrt(variance / len(values)), "n": len(values)}


def shown(measure: dict, digits: int = 2) -> str:
    return f"{measure['mean']:.{digits}f} ± {measure['half_width']:.{digits}f}"


def plot(results: list[dict], path: Path) -> None:
    """Score gain against KL, one point per method: the trade every method makes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results[0]["score"]["mean"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for row in results:
        axes.errorbar(row["kl"]["mean"], row["score"]["mean"] - base, xerr=row["kl"]["half_width"],
                      yerr=row["score"]["half_width"], fmt="o", capsize=3)
        axes.annotate(row["method"], (row["kl"]["mean"], row["score"]["mean"] - base), textcoords="offset points",
                      xytext=(5, 5))
    axes.set_xlabel("KL to the base (nats per answer)")
    axes.set_ylabel("reward-model score gain over the base")
    axes.set_title("Policy-update methods on SmolLM2-135M (held-out prompts)")
    axes.axhline(0, color="grey", linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run_child(name: str, precision: str) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", name, "--child-precision", precision, *sys.argv[1:]],
                         cwd=ROOT, capture_output=True, text=True)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if run.returncode or line is None:
        print(run.stdout[-3000:], run.stderr[-5000:])
        raise SystemExit(f"the {name} run in {precision} failed")
    return json.loads(line.removeprefix("RESULT "))


PRECISION_SECTION = "## bf16 against fp32, per method (issue 27)"


def compare_precisions(args, info: dict) -> int:
    """Every method trained in each precision from the same start, interleaved (fp32 then
    bf16 for one method, then the next), so drift in the machine's load falls on both;
    every trained policy measured the same way, in fp32 (the training's effect, not the
    sampling's precision)."""
    from benchmark_report import command_line, machine_lines, replace_section

    first, second = args.precisions.split(",")
    base = run_child("base", first)
    print("base:", base, flush=True)
    rows, points = [], []
    for name in args.methods.split(","):
        pair = {}
        for precision in (first, second):
            started = time.monotonic()
            pair[precision] = run_child(name, precision)
            print(f"{name} in {precision} ({time.monotonic() - started:.0f} s):", pair[precision], flush=True)
        a, b = pair[first], pair[second]
        gains = {p: pair[p]["score"]["mean"] - base["score"]["mean"] for p in (first, second)}
        points.append((name, gains, pair))
        rows.append(" | ".join([
            f"`{name}`", f"{a['seconds']:.0f}", f"{b['seconds']:.0f}", f"{b['seconds'] / a['seconds']:.2f}",
            f"{a['peak_rss_gib']:.2f}", f"{b['peak_rss_gib']:.2f}", f"{b['peak_rss_gib'] / a['peak_rss_gib']:.2f}",
            f"{gains[first]:+.2f} ± {a['score']['half_width']:.2f}",
            f"{gains[second]:+.2f} ± {b['score']['half_width']:.2f}",
            f"{a['kl']['mean']:.1f}", f"{b['kl']['mean']:.1f}",
        ]))
    chart = ROOT / "docs" / "bench-precision.png"
    plot_precisions(points, first, second, chart)
    section = "\n".join([
        PRECISION_SECTION, "",
        f"Command: `{command_line()}`", "",
        *machine_lines(),
        f"- Every method from the SmolLM2-135M-Instruct base with the same reward model, pairs ({info['pairs']} "
        f"oracle pairs, `{ORACLE}`), {args.prompts} training prompts, {args.response_length} new tokens, seed 0 and "
        f"registry defaults, trained once with the run setting `precision={first}` and once with `{second}` (frozen "
        "weights in it, LoRA adapters in fp32, the trainer under autocast), each in its own process; the two of one "
        "method ran one after the other. Wall time is the whole update (loading included); peak is the process's "
        "peak RSS.",
        f"- Reward gained: the trained policy's mean reward-model score (normalized) minus the base's, on "
        f"{args.eval_prompts} held-out prompts × {args.eval_answers} answers at T=0.7, every policy sampled and "
        "scored in fp32, so the column measures what the training did; ± is the 95% half-width of the policy's "
        "own mean (normal approximation over answers). KL to the base in nats per answer.",
        "",
        f"| Method | {first} (s) | {second} (s) | {second} ÷ {first} time | {first} peak (GiB) | {second} peak (GiB) "
        f"| {second} ÷ {first} peak | gain, {first} | gain, {second} | KL, {first} | KL, {second} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {row} |" for row in rows),
        "",
        f"![Reward gained in each precision]({chart.name})",
    ])
    replace_section(PRECISION_SECTION, section)
    print(section)
    return 0


def plot_precisions(points, first: str, second: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (gain_axes, time_axes) = plt.subplots(1, 2, figsize=(10, 4))
    names = [name for name, _, _ in points]
    for offset, precision in ((-0.18, first), (0.18, second)):
        xs = [i + offset for i in range(len(points))]
        gain_axes.errorbar(xs, [gains[precision] for _, gains, _ in points],
                           yerr=[pair[precision]["score"]["half_width"] for _, _, pair in points],
                           fmt="o", capsize=3, label=precision)
        time_axes.bar(xs, [pair[precision]["seconds"] for _, _, pair in points], width=0.36, label=precision)
    for axes, title in ((gain_axes, "reward gained over the base"), (time_axes, "wall time of the update (s)")):
        axes.set_xticks(range(len(points)), names, rotation=30)
        axes.set_title(title)
        axes.legend()
    gain_axes.axhline(0, color="grey", linewidth=0.5)
    figure.suptitle("Policy updates in fp32 and bf16 on SmolLM2-135M, this CPU")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    from training.ml.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (also the rollouts of PPO)")
    parser.add_argument("--answers", type=int, default=4, help="base answers per training prompt for the labels")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts for the measurements")
    parser.add_argument("--eval-answers", type=int, default=4, help="answers per held-out prompt scored")
    parser.add_argument("--response-length", type=int, default=48, help="new tokens per answer, for every method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    parser.add_argument("--learning-rate", type=float, help="one for every method (default: each method's own)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch decides)")
    parser.add_argument("--precisions", help="e.g. fp32,bf16: train every method in each (interleaved) and "
                                             "write the precision comparison instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(train_and_measure(args.child, args)), flush=True)
        return 0

    info = prepare_labels_and_reward_model(args)
    print("reward model:", info, flush=True)
    if args.precisions:
        return compare_precisions(args, info)
    results = []
    for name in ["base", *args.methods.split(",")]:
        started = time.monotonic()
        run = subprocess.run([sys.executable, __file__, "--child", name, *sys.argv[1:]], cwd=ROOT,
                             capture_output=True, text=True)
        line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
        if run.returncode or line is None:
            print(run.stdout[-3000:], run.stderr[-5000:])
            raise SystemExit(f"the {name} run failed")
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(f"{name} ({time.monotonic() - started:.0f} s):", results[-1], flush=True)

    from benchmark_report import command_line, machine_lines, replace_section

    chart = ROOT / "docs" / "bench-methods.png"
    plot(results, chart)
    base = results[0]
    accuracy = "none held out" if info["accuracy"] is None else f"{info['accuracy']:.3f}"
    rows = []
    for row in results:
        gain = row["score"]["mean"] - base["score"]["mean"]
        minutes = row.get("seconds", 0) / 60
        rows.append(" | ".join([
            f"`{row['method']}`", f"{row['seconds']:.0f}" if "seconds" in row else "—",
            f"{row['trainer_seconds']:.0f}" if "trainer_seconds" in row else "—",
            f"{row['peak_rss_gib']:.2f}" if "peak_rss_gib" in row else "—", str(row.get("examples", "—")),
            shown(row["score"]), f"{gain:+.2f}", f"{gain / minutes:+.3f}" if minutes else "—",
            shown(row["kl"], 1), shown(row["tokens"], 1), shown(row["ended"]),
        ]))
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}` (part of `make bench`).", "",
        *machine_lines(),
        f"- Settings: SmolLM2-135M-Instruct base, LoRA r=16 policies, fp32; every method from the base, "
        f"{args.prompts} training prompts, {args.response_length} new tokens per answer, learning rate "
        f"{args.learning_rate or 'of each method'}, seed 0, each method's registry defaults otherwise (one pass over "
        "the prompts or pairs; PPO one rollout per prompt). Wall time is the whole update as a job runs it "
        "(loading included); \"of which training\" is what the method reports (for best-of-N: sampling, scoring "
        "and fine-tuning). Gain per minute divides by the whole wall time.",
        f"- Labels: {info['pairs']} oracle pairs ({args.answers} base answers per training prompt, every pair "
        f"the oracle orders; `{ORACLE}`: the shorter answer, an apology costs 200 characters). Reward model: "
        f"PrefLoop's defaults (LoRA, 1 epoch), held-out accuracy {accuracy} on {info['pairs'] - info['train_pairs']} "
        f"pairs, trained in {info['seconds']:.0f} s.",
        f"- Measured on {args.eval_prompts} held-out prompts: {args.eval_answers} answers each at T=0.7 for the "
        "score, length and ending; 2 each at T=1 for KL to the base. Intervals: 95%, normal approximation over "
        "answers (answers to one prompt are not independent, so they are optimistic).",
        "",
        "| Method | Wall time of the update (s) | of which training (s) | Peak RSS (GiB) | Examples trained on "
        "| RM score (normalized) | Gain over base | Gain per minute | KL to base (nats) | Answer tokens "
        "| Share ended |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {row} |" for row in rows),
        "",
        f"![Score gain against KL]({chart.name})",
        "",
        "The reward-model score is what the RL methods maximize; DPO and SFT on chosen answers never see the "
        "reward model, so their gain is transfer through the labels. This benchmark compares cost and "
        "movement, at one small budget, on one seed; it is not a verdict on quality.",
    ])
    replace_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
