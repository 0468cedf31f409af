"""Reward-model benchmark (`make bench`): SmolLM2-135M-Instruct with LoRA on this machine.

1. Throughput: train a reward model on N labels (default 256) in this process and time
   it: training pairs/s, the trainer's own time, and the job's wall time (model load,
   training, held-out accuracy, normalization, ensemble heads, publishing).
2. Freshness: with a real redis-server and Celery `train` worker running and the
   automatic trigger set to K labels (default 32), label K more comparisons and time
   from the K-th label to the published version that includes it.

A fresh database and artifact folder under var/bench-rm/; the base model is the one
`make demo` prepares. Results replace the "Reward model" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench-rm"
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
SECTION = "## Reward model (issue 3)"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402
from reward_bench_data import fresh_bench_run, label_comparisons, use_bench_environment  # noqa: E402

# Before Django is imported: this process and the worker share the bench database.
use_bench_environment(BENCH_DIR, BASE_MODEL_DIR)


def measure_throughput(labels: int, annotator, base) -> dict:
    from training import services

    label_comparisons(labels, 0, annotator, base)
    job = services.create_reward_training_job(base.run, reason="benchmark")
    services.claim_reward_training(job)
    started = time.monotonic()
    version = services.run_reward_training_job(job)
    wall = time.monotonic() - started
    if version is None:
        job.refresh_from_db()
        raise SystemExit(f"training failed: {job.error}")
    summary = next(m for m in reversed(version.metrics) if "train/train_runtime" in m)
    return {
        "labels": version.label_count, "train_pairs": version.train_pairs, "heldout_pairs": version.heldout_pairs,
        "accuracy": version.heldout_accuracy, "wall_s": wall, "trainer_s": summary["train/train_runtime"],
        "pairs_per_s": version.train_pairs * version.config["epochs"] / summary["train/train_runtime"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def measure_freshness(trigger: int, start: int, annotator, base) -> dict:
    """Through the real parts: the K-th label's commit triggers the job on the worker."""
    from training.models import Job, RewardModelVersion

    before = RewardModelVersion.objects.count()
    base.run.reward_auto_train_labels = trigger
    base.run.reward_config["refit_every_labels"] = 0  # the full retrain only (refits: bench_reward_freshness.py)
    base.run.save(update_fields=["reward_auto_train_labels", "reward_config"])
    last_label_at = label_comparisons(trigger, start, annotator, base)
    while RewardModelVersion.objects.count() == before:
        time.sleep(0.5)
    seen = time.time()
    version = RewardModelVersion.objects.order_by("-number").first()
    job = Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).order_by("-pk").first()
    return {
        "freshness_s": version.created_at.timestamp() - last_label_at, "seen_after_s": seen - last_label_at,
        "queue_s": (job.started_at - job.created_at).total_seconds(),
        "job_s": (job.finished_at - job.started_at).total_seconds(), "labels": version.label_count,
        "accuracy": version.heldout_accuracy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=256)
    parser.add_argument("--trigger", type=int, default=32, help="new labels that trigger training")
    args = parser.parse_args()

    annotator, base = fresh_bench_run(BENCH_DIR, BASE_MODEL_DIR, ROOT)
    throughput = measure_throughput(args.labels, annotator, base)
    print(throughput, flush=True)

    from tests.processes import running_celery_worker, running_redis

    with running_redis(os.environ["REDIS_URL"], BENCH_DIR), running_celery_worker(
        "train", {"PREFLOOP_TORCH_THREADS": "0"}, BENCH_DIR / "worker.log", pool="prefork"
    ):
        freshness = measure_freshness(args.trigger, args.labels, annotator, base)
    print(freshness, flush=True)

    rows = [
        ("Labels / training pairs / held-out pairs",
         f"{throughput['labels']} / {throughput['train_pairs']} / {throughput['heldout_pairs']}"),
        ("Training throughput (pairs/s, one epoch, LoRA r=16, batch 8)", f"{throughput['pairs_per_s']:.2f}"),
        ("Trainer time for the epoch", f"{throughput['trainer_s']:.0f} s"),
        (f"Job wall time for {throughput['labels']} labels (load, train, evaluate, normalize, ensemble, publish)",
         f"{throughput['wall_s']:.0f} s"),
        ("Held-out accuracy (oracle: prefers the answer with a number)", f"{throughput['accuracy']:.3f}"),
        ("Peak memory of the training process", f"{throughput['peak_rss_gib']:.1f} GiB"),
        (f"Freshness: new label no. {args.trigger} → published version including it",
         f"{freshness['freshness_s']:.0f} s"),
        ("… of which waiting in the queue / the job itself",
         f"{freshness['queue_s']:.1f} s / {freshness['job_s']:.0f} s"),
        ("Labels in that version, its held-out accuracy", f"{freshness['labels']}, {freshness['accuracy']:.3f}"),
    ]
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}` (part of `make bench`).", "",
        *machine_lines(),
        "- Setup: SmolLM2-135M-Instruct backbone (fp32, CPU), LoRA r=16 on all linear layers, 1 epoch, "
        "lr 1e-4, max_length 512, 5 bootstrap ensemble heads; synthetic ~60-word completions; "
        "fresh SQLite database; freshness through redis-server and a Celery prefork `train` worker "
        "(every version trains on all labels so far, warm-started from the previous one).",
        "",
        "| Metric | Value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows),
    ])
    replace_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
