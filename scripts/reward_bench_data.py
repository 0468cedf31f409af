"""Shared by the reward-model benchmarks (bench_reward_model.py, bench_reward_freshness.py):
the environment of a bench database with its own redis port, and comparisons labeled by
an oracle that prefers the answer with a concrete number."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

FILLER = ("Here is a clear answer. It covers the main point first, then adds a detail that helps, "
          "and closes with a short note on what to watch out for when you try it yourself.").split()


def use_bench_environment(bench_dir: Path, base_model_dir: Path) -> None:
    """Before Django is imported: this process and its workers share the bench database,
    a redis on a free port and the base model; no automatic reward-model training."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        redis_port = probe.getsockname()[1]
    os.environ.update(
        DATABASE_URL=f"sqlite:///{bench_dir / 'bench.sqlite3'}", PREFLOOP_VAR_DIR=str(bench_dir),
        PREFLOOP_BASE_MODEL_DIR=str(base_model_dir), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DJANGO_SETTINGS_MODULE="prefloop.settings",
        PREFLOOP_RM_AUTO_TRAIN_LABELS="0",
    )


def fresh_bench_run(bench_dir: Path, base_model_dir: Path, root: Path):
    """An empty, migrated bench database with the base model prepared (after
    use_bench_environment): its annotator and the default run's base version."""
    import shutil
    import subprocess
    import sys

    from training.ml.base_model import prepare_base_model

    prepare_base_model(base_model_dir, convert_smollm2_if_missing=True)
    shutil.rmtree(bench_dir, ignore_errors=True)
    bench_dir.mkdir(parents=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=root, check=True)
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from training import services

    annotator = get_user_model().objects.create_user("bench-annotator")
    return annotator, services.ensure_default_run().base_version


def completion(rng: random.Random, with_number: bool) -> str:
    """About 60 words, like the demo's completions."""
    words = [rng.choice(FILLER) for _ in range(60)]
    if with_number:
        words.insert(rng.randint(0, 59), str(rng.randint(2, 999)))
    return " ".join(words)


def oracle_pair(rng: random.Random, index: int) -> tuple[list[dict], str, str]:
    """(prompt messages, the answer the oracle prefers, the other)."""
    prompt = [{"role": "user", "content": f"Bench question {index}: how many?"}]
    return prompt, completion(rng, True), completion(rng, False)


def label_comparisons(count: int, start: int, annotator, base) -> float:
    """Create and label `count` comparisons of the base policy's run; returns when the
    last label was committed."""
    from labeling.models import Completion, Prompt
    from labeling.services import LabelInput, create_comparison, submit_label

    rng = random.Random(start)
    for i in range(start, start + count):
        messages, chosen, rejected = oracle_pair(rng, i)
        prompt = Prompt.objects.create(messages=messages)
        pair = [Completion.objects.create(prompt=prompt, policy_version=base, text=t) for t in (chosen, rejected)]
        comparison = create_comparison(base.run, prompt, pair, source="initial", rng=rng)
        winner = "a" if comparison.ordered_completions()[0].text == chosen else "b"
        submit_label(annotator, LabelInput(comparison.pk, winner, active_seconds=5), require_lease=False)
    return time.time()
