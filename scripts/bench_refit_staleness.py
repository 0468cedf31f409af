"""How far a head refit trails a full retrain when its backbone is as fresh as the default
trigger keeps it (issue 13 item 1), on the database `bench_reward_freshness.py` left in
var/bench-fresh/ (run that first).

That benchmark compares, on its first `--compare-at` labels, a full retrain with a head
refit whose backbone saw only half of them. With the automatic trigger's default
(`reward_auto_train_labels` 32), a backbone is at most 32 labels behind. This script
trains that backbone: a full retrain on the first `compare_at - stale_by` labels,
warm-started from the same version the benchmark's full retrain started from, refits its
head on all `compare_at` labels, and scores it against the benchmark's full retrain on the
same fresh oracle pairs (paired bootstrap interval). Prints a markdown block for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench-fresh"
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from benchmark_report import command_line  # noqa: E402
from reward_bench_data import use_bench_environment  # noqa: E402

use_bench_environment(BENCH_DIR, BASE_MODEL_DIR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-at", type=int, default=500, help="as given to bench_reward_freshness.py")
    parser.add_argument("--stale-by", type=int, default=32, help="labels the backbone has not seen")
    parser.add_argument("--test-pairs", type=int, default=400, help="as given to bench_reward_freshness.py")
    args = parser.parse_args()
    if not (BENCH_DIR / "bench.sqlite3").is_file():
        raise SystemExit("run scripts/bench_reward_freshness.py first: its database is what this measures on")

    import django

    django.setup()
    from bench_reward_freshness import test_accuracy

    from training import services
    from training.models import Job, RewardModelVersion, Run
    from training.services import reward_models
    from training.services.reward_models import run_reward_refit_job

    run = Run.objects.get(name="default")
    full = RewardModelVersion.objects.filter(run=run, backbone=None, last_label_id=args.compare_at).order_by(
        "number").first()
    if full is None:
        raise SystemExit(f"no full retrain on {args.compare_at} labels in the bench database")
    start = full.parent  # what the benchmark's full retrain was warm-started from

    def pinned_job(kind: str, last_label_id: int) -> Job:
        job = services.create_reward_training_job(run, reason="staleness benchmark", kind=kind)
        job.params = {**job.params, "last_label_id": last_label_id}
        job.save(update_fields=["params"])
        assert services.claim_reward_training(job)
        return job

    # The run's newest version now is a refit of the benchmark's later probes: the stale
    # backbone must start where the full retrain started, not from a version that saw
    # the labels it is to miss.
    newest = reward_models.latest_reward_model
    reward_models.latest_reward_model = lambda _run: start
    started = time.monotonic()
    backbone = services.run_reward_training_job(pinned_job(Job.Kind.TRAIN_REWARD, args.compare_at - args.stale_by))
    backbone_s = time.monotonic() - started
    reward_models.latest_reward_model = lambda _run: backbone
    refit = run_reward_refit_job(pinned_job(Job.Kind.REFIT_REWARD, args.compare_at))
    reward_models.latest_reward_model = newest
    if backbone is None or refit is None:
        raise SystemExit("a job failed: " + "; ".join(Job.objects.filter(status="failed").values_list("error",
                                                                                                      flat=True)))
    assert refit.backbone == backbone and refit.last_label_id == full.last_label_id
    accuracies, (difference, low, high) = test_accuracy([full, refit], args.test_pairs)
    print("\n".join([
        f"Command: `{command_line()}` (after the benchmark above, on its database).", "",
        f"| Version | Accuracy on the {args.test_pairs} fresh oracle pairs |", "| --- | --- |",
        f"| full retrain v{full.number} ({full.label_count} labels) | {accuracies[0]:.3f} |",
        f"| head refit v{refit.number} on v{backbone.number} ({backbone.label_count} labels, full retrain "
        f"{backbone_s:.0f} s, warm-started from v{start.number}) | {accuracies[1]:.3f} |", "",
        f"Refit − full: {100 * difference:+.1f} points, 95% paired bootstrap interval "
        f"[{100 * low:+.1f}, {100 * high:+.1f}].",
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
