"""Markdown tables of a finished experiment, for docs/experiments.md: every arm, seed and
round as recorded; the summary across seeds (the page's table); and paired comparisons
on the evaluation prompts, which every arm answers at every round.

    PREFLOOP_VAR_DIR=/tmp/repro/ab .venv/bin/python scripts/experiment_tables.py 1

The paired comparison is the difference of two arms' gold scores on the same evaluation
prompt at the same seed, averaged over prompts (and seeds) with a Student's t 95%
interval. It measures how sure the difference is over the prompts' sampling, at these
trained policies; it does not cover the variation between training seeds, which only
more seeds can (the across-seed intervals do, and with one or two seeds they are wide or
absent).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> int:
    import django

    django.setup()
    from experiments import statistics
    from experiments.models import ArmRun, Experiment, GoldScore
    from experiments.results import experiment_summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=int)
    parser.add_argument("--baseline", help="the arm the paired comparisons are against (default: the last arm)")
    args = parser.parse_args()
    experiment = Experiment.objects.get(pk=args.experiment)
    rounds = int(experiment.design["rounds"])
    print(f"### {experiment.name} (experiment {experiment.pk}, {experiment.status})\n")

    print("| arm | seed | round | labels | gold | proxy | KL (nats) | mean answer chars | ended | compute (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    scores: dict[tuple[str, int, int], dict[int, float]] = defaultdict(dict)
    for arm_run in ArmRun.objects.filter(experiment=experiment).order_by("pk"):
        for result in arm_run.results.order_by("round_index"):
            golds = list(GoldScore.objects.filter(result=result).select_related("completion"))
            for gold in golds:
                scores[(arm_run.arm, arm_run.seed, result.round_index)][gold.prompt_id] = gold.score
            chars = sum(len(g.completion.text) for g in golds) / len(golds)
            ended = sum(g.completion.ended for g in golds) / len(golds)
            print(f"| {arm_run.arm} | {arm_run.seed} | {result.round_index} | {result.labels} | "
                  f"{result.gold_reward:.1f} | {fmt(result.proxy_reward, 2)} | {fmt(result.kl, 2)} | {chars:.0f} | "
                  f"{ended:.2f} | {result.compute_seconds:.0f} |")

    summary = experiment_summary(experiment)
    print("\n| arm | seeds finished | final gold (95% CI across seeds) | gain over round 0 | final proxy | KL |")
    print("|---|---|---|---|---|---|")
    for row in summary["arms"]:
        print(f"| {row['arm']} | {row['finished']}/{row['seeds']} | {row['final_gold'] or '–'} | "
              f"{row['gain'] or '–'} | {row['final_proxy'] or '–'} | {fmt(row['kl'], 2)} |")
    print(f"\nVerdict (the page's): {summary['verdict']}\n")

    arms = [row["arm"] for row in summary["arms"] if row["finished"]]
    baseline = args.baseline or (arms[-1] if arms else None)
    seeds = sorted({seed for (_, seed, _) in scores})
    print(f"Paired on the evaluation prompts, against `{baseline}` (gold of the arm − gold of `{baseline}`, "
          "same prompt and seed; mean over prompts × seeds, t 95% interval):\n")
    print("| arm | round | pairs | difference | interval |")
    print("|---|---|---|---|---|")
    for arm in arms:
        if arm == baseline:
            continue
        for index in range(1, rounds + 1):
            differences = []
            for seed in seeds:
                ours, theirs = scores.get((arm, seed, index), {}), scores.get((baseline, seed, index), {})
                differences += [ours[p] - theirs[p] for p in ours.keys() & theirs.keys()]
            if len(differences) < 2:
                continue
            interval = statistics.t_interval(differences)
            print(f"| {arm} | {index} | {len(differences)} | {interval.mean:+.1f} | "
                  f"[{interval.low:+.1f}, {interval.high:+.1f}] |")
    print("\nGain over the base (round 0) on the same prompts, per arm, final round:\n")
    print("| arm | pairs | gain | interval |")
    print("|---|---|---|---|")
    for arm in arms:
        gains = []
        for seed in seeds:
            final, base = scores.get((arm, seed, rounds), {}), scores.get((arm, seed, 0), {})
            gains += [final[p] - base[p] for p in final.keys() & base.keys()]
        if len(gains) >= 2:
            interval = statistics.t_interval(gains)
            print(f"| {arm} | {len(gains)} | {interval.mean:+.1f} | [{interval.low:+.1f}, {interval.high:+.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
