"""Reward-model freshness benchmark (`make bench`, issue 13 item 1): how long a new label
takes to reach a published reward-model version as the labels grow, with SmolLM2-135M.

1. Label the first size's comparisons and train a full version on them (the backbone).
2. At each size (default 250, 1,000, 4,000 labels): with the features of every labeled
   answer cached (a refit run here first embeds what the labels added since the last
   one, as the full retrain behind the refits would in steady operation), turn the
   automatic trigger on and submit `--probes` labels one at a time; each is timed from
   its commit to the published version that includes it, through a real redis-server and
   a Celery `refit` worker.
3. At `--compare-at` labels: a refit and a full retrain on the same labels (the same
   pinned label id), their held-out accuracies, and both scored on `--test-pairs` fresh
   pairs of the same oracle (a paired comparison with a bootstrap interval). The full
   retrain's wall time is the baseline: the time a label waits with full retrains only.

A fresh database and artifact folder under var/bench-fresh/; the base model is the one
`make demo` prepares. Results replace the "Reward-model freshness" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench-fresh"
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
SECTION = "## Reward-model freshness (issue 13)"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402
from reward_bench_data import fresh_bench_run, label_comparisons, oracle_pair, use_bench_environment  # noqa: E402

# Before Django is imported: this process and the worker share the bench database.
use_bench_environment(BENCH_DIR, BASE_MODEL_DIR)


def run_inline(kind: str, run):
    """A reward-model job of this kind, run in this process; (version, seconds)."""
    from training import services
    from training.models import Job
    from training.services.reward_models import run_reward_refit_job

    job = services.create_reward_training_job(run, reason="benchmark", kind=kind)
    services.claim_reward_training(job)
    started = time.monotonic()
    version = (services.run_reward_training_job if kind == Job.Kind.TRAIN_REWARD else run_reward_refit_job)(job)
    if version is None:
        job.refresh_from_db()
        raise SystemExit(f"{kind} failed: {job.error}")
    return version, time.monotonic() - started


def set_trigger(run, on: bool) -> None:
    """On: a refit after every label, never a full retrain (the threshold is out of reach)."""
    run.reward_auto_train_labels = 10**9 if on else 0
    run.save(update_fields=["reward_auto_train_labels"])


def probe_freshness(probes: int, start: int, annotator, base) -> list[dict]:
    from training.models import Job, RewardModelVersion

    set_trigger(base.run, True)
    results = []
    for i in range(probes):
        committed = label_comparisons(1, start + i, annotator, base)
        from labeling.models import Label

        wanted = Label.objects.order_by("-pk").first().pk
        deadline = time.monotonic() + 600
        while not RewardModelVersion.objects.filter(last_label_id__gte=wanted).exists():
            if time.monotonic() > deadline:
                raise SystemExit("no version within 10 minutes; see var/bench-fresh/worker.log")
            time.sleep(0.1)
        version = RewardModelVersion.objects.filter(last_label_id__gte=wanted).order_by("number").first()
        job = Job.objects.get(kind=Job.Kind.REFIT_REWARD, result__version=version.number)
        results.append({
            "freshness_s": version.created_at.timestamp() - committed,
            "queue_s": (job.started_at - job.created_at).total_seconds(),
            "job_s": (job.finished_at - job.started_at).total_seconds(),
            "embedded": job.result["embedded"], "labels": version.label_count,
            "accuracy": version.heldout_accuracy,
        })
        print(results[-1], flush=True)
        # The next probe starts from a quiet worker, as a label that arrives after this one's version.
        while Job.objects.filter(kind=Job.Kind.REFIT_REWARD, status__in=["pending", "running"]).exists():
            time.sleep(0.1)
    set_trigger(base.run, False)
    return results


def test_accuracy(versions: list, pairs: int) -> tuple[list[float], tuple[float, float, float]]:
    """Accuracy of each version on fresh oracle pairs, and the paired difference (second
    minus first) with a 95% bootstrap interval."""
    import torch

    from training import services

    rng = random.Random(10**6)
    test = [oracle_pair(rng, 10**6 + i) for i in range(pairs)]
    correct = []
    for version in versions:
        scorer = services.load_scorer(version)
        chosen = scorer.score([(p, c) for p, c, _ in test])
        rejected = scorer.score([(p, r) for p, _, r in test])
        correct.append((chosen > rejected).float())
        del scorer
    difference = correct[1] - correct[0]
    generator = torch.Generator().manual_seed(0)
    means = torch.stack([difference[torch.randint(pairs, (pairs,), generator=generator)].mean()
                         for _ in range(2000)])
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975])).tolist()
    return [c.mean().item() for c in correct], (difference.mean().item(), low, high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,1000,4000", help="label counts to probe at")
    parser.add_argument("--probes", type=int, default=5, help="labels timed at each size")
    parser.add_argument("--compare-at", type=int, default=500, help="labels for the refit vs full retrain")
    parser.add_argument("--test-pairs", type=int, default=400)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    annotator, base = fresh_bench_run(BENCH_DIR, BASE_MODEL_DIR, ROOT)
    from tests.processes import running_celery_worker, running_redis
    from training.models import Job

    run = base.run
    run.reward_config.update(refit_every_labels=1)
    run.save(update_fields=["reward_config"])

    labeled = 0

    def grow_to(size: int) -> None:
        nonlocal labeled
        started = time.monotonic()
        label_comparisons(size - labeled, labeled, annotator, base)
        print(f"labeled {labeled} → {size} in {time.monotonic() - started:.0f} s", flush=True)
        labeled = size

    grow_to(sizes[0])
    backbone, backbone_s = run_inline(Job.Kind.TRAIN_REWARD, run)
    print(f"backbone v{backbone.number} on {backbone.label_count} labels in {backbone_s:.0f} s", flush=True)

    probes, warmups, comparison = {}, {}, None
    with running_redis(os.environ["REDIS_URL"], BENCH_DIR), running_celery_worker(
        "refit", {"PREFLOOP_TORCH_THREADS": "0"}, BENCH_DIR / "worker.log", pool="prefork"
    ):
        for size in sorted({*sizes, args.compare_at}):
            if size > labeled:
                grow_to(size)
            if size == args.compare_at:
                refit, refit_s = run_inline(Job.Kind.REFIT_REWARD, run)
                full, full_s = run_inline(Job.Kind.TRAIN_REWARD, run)
                assert refit.last_label_id == full.last_label_id
                accuracies, difference = test_accuracy([full, refit], args.test_pairs)
                comparison = {"refit": refit, "full": full, "refit_s": refit_s, "full_s": full_s,
                              "test": accuracies, "difference": difference}
                print(comparison, flush=True)
            if size in sizes:
                if size != sizes[0] or size == args.compare_at:
                    _, warmups[size] = run_inline(Job.Kind.REFIT_REWARD, run)
                probes[size] = probe_freshness(args.probes, 10**5 + 100 * size, annotator, base)
                labeled += args.probes

    rows = []
    for size in sizes:
        results = probes[size]
        times = [r["freshness_s"] for r in results]
        warmup = f"{warmups[size]:.0f} s" if size in warmups else "–"
        rows.append(f"| {size:,} | {statistics.median(times):.1f} s | {max(times):.1f} s | "
                    f"{statistics.median(r['queue_s'] for r in results):.1f} s | "
                    f"{statistics.median(r['job_s'] for r in results):.1f} s | "
                    f"{statistics.median(r['embedded'] for r in results):.0f} | {warmup} |")
    c = comparison
    median_at = {size: statistics.median(r["freshness_s"] for r in probes[size]) for size in sizes}
    reference = min((size for size in sizes if size >= args.compare_at), default=max(sizes))
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}` (part of `make bench`).", "",
        *machine_lines(),
        f"- Setup: SmolLM2-135M-Instruct backbone (fp32, CPU), LoRA r=16 on all linear layers, 1 epoch, lr 1e-4; "
        f"synthetic ~60-word answers, the oracle prefers the one with a number (as in the reward-model "
        f"benchmark); the backbone is a full retrain on the first {sizes[0]} labels "
        f"({backbone_s:.0f} s). Each probe is one label, timed from its commit to the published version "
        f"that includes it, through redis-server and a Celery prefork `refit` worker, nothing else running. "
        f"Before each size's probes, one refit in the benchmark's process embeds the answers the labels "
        f"added since the last one (the warm-up column), as the full retrains behind the refits do in "
        f"steady operation.",
        "",
        f"| Labels | Freshness, median of {args.probes} | max | in the queue | refit job | answers embedded "
        f"| warm-up |",
        "| --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"**Baseline (full retrains only):** a label waits at least one full retrain: {c['full_s']:.0f} s for the "
        f"one on {c['full'].label_count} labels (the refit on the same labels took {c['refit_s']:.0f} s, "
        f"embedding the {c['refit'].label_count - c['refit'].backbone.label_count} labels' answers its backbone "
        f"had not seen), and the full retrain grows about linearly with the labels. Against the refit's median "
        f"freshness at {reference:,} labels: **{c['full_s'] / median_at[reference]:.0f}× shorter**.", "",
        f"**Accuracy, same labels ({c['full'].label_count}, pinned label id {c['full'].last_label_id}):**", "",
        "| Version | Held-out accuracy (pairs) | Accuracy on fresh oracle pairs |", "| --- | --- | --- |",
        f"| full retrain v{c['full'].number} | {c['full'].heldout_accuracy:.3f} ({c['full'].heldout_pairs}) | "
        f"{c['test'][0]:.3f} ({args.test_pairs}) |",
        f"| head refit v{c['refit'].number} on v{c['refit'].backbone.number} ({c['refit'].backbone.label_count} "
        f"labels) | {c['refit'].heldout_accuracy:.3f} ({c['refit'].heldout_pairs}) | {c['test'][1]:.3f} |", "",
        f"Refit − full on the fresh pairs: {100 * c['difference'][0]:+.1f} points, 95% paired bootstrap interval "
        f"[{100 * c['difference'][1]:+.1f}, {100 * c['difference'][2]:+.1f}].",
    ])
    replace_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
