"""Progress-page benchmark (`make bench`): how long /progress/, a version page and /me/
take to render once a project has many labels.

Seeds a fresh SQLite database under var/bench/ with policy versions, annotators,
comparisons (a share of them cross-version, a share labeled by two people) and labels,
then renders each page several times through Django's test client (the whole view:
queries, statistics, Bradley–Terry fit, template) and reports the median and worst time.
The results replace the "Progress pages" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
DB_PATH = ROOT / "var" / "bench" / "progress.sqlite3"
SECTION = "## Progress pages (issue 5)"
os.environ.update(DATABASE_URL=f"sqlite:///{DB_PATH}", HF_HUB_OFFLINE="1", DJANGO_SETTINGS_MODULE="prefloop.settings")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402


def seed(labels: int, versions: int, annotators: int, cross_share: float, overlap_share: float, rng) -> dict:
    from django.contrib.auth import get_user_model

    from labeling.models import Comparison, ComparisonItem, Completion, Label, Prompt
    from training.models import PolicyVersion, RewardModelVersion
    from training.services import create_run

    people = get_user_model().objects.bulk_create(
        get_user_model()(username=f"annotator{i}") for i in range(annotators))
    get_user_model().objects.create_user("researcher", password="x", is_staff=True)
    run = create_run("bench", "/models/base")
    policies = [run.base_version]
    for number in range(1, versions):
        policies.append(PolicyVersion.objects.create(
            number=number, run=run, parent=policies[-1], method="ppo", base_model_dir="/models/base",
            metrics={"history": [{"step": s, "ppo/reward": s / 10, "ppo/kl": s / 100, "ppo/entropy": 40 - s}
                                 for s in range(1, 9)]}))
        RewardModelVersion.objects.create(number=number, run=run, base_model_dir="/models/base", weights_dir="/rm",
                                          label_count=number * 100, heldout_accuracy=0.6 + number / 100)
    prompts = Prompt.objects.bulk_create(
        Prompt(messages=[{"role": "user", "content": f"Prompt {i}"}], content_hash=f"{i:064x}") for i in range(1000))
    completions = {}
    rows = Completion.objects.bulk_create(
        Completion(prompt=p, policy_version=v, text=f"v{v.number} on {p.pk}") for p in prompts for v in policies)
    for row in rows:
        completions[(row.prompt_id, row.policy_version.number)] = row

    batch = 5000
    with tqdm(total=labels, desc="seeding labels", unit="label") as bar:
        for start in range(0, labels, batch):
            size = min(batch, labels - start)
            comparisons, pairs = [], []
            for _ in range(size):
                prompt = rng.choice(prompts)
                newer = rng.randrange(1, versions)
                older = rng.choice([0, newer - 1])
                cross = rng.random() < cross_share
                comparisons.append(Comparison(prompt=prompt, run=run, label_count=1,
                                              source="cross_version" if cross else "policy"))
                pairs.append((completions[(prompt.pk, newer)], completions[(prompt.pk, older)]))
            Comparison.objects.bulk_create(comparisons)
            ComparisonItem.objects.bulk_create(
                ComparisonItem(comparison=c, completion=done, position=i)
                for c, pair in zip(comparisons, pairs, strict=True) for i, done in enumerate(pair))
            new_labels = []
            for comparison in comparisons:
                who = rng.sample(people, 2 if rng.random() < overlap_share else 1)
                new_labels += [Label(comparison=comparison, annotator=person, active_seconds=rng.uniform(2, 30),
                                     choice=rng.choice(["a", "a", "b", "tie"])) for person in who]
            Label.objects.bulk_create(new_labels)
            bar.update(size)
    return {"labels": Label.objects.count(), "comparisons": Comparison.objects.count()}


def time_page(client, url: str, runs: int) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(seconds), max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    DB_PATH.parent.mkdir(parents=True, exist_ok=True)
    for leftover in DB_PATH.parent.glob(DB_PATH.name + "*"):
        leftover.unlink()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    counts = seed(args.labels, args.versions, args.annotators, cross_share=0.3, overlap_share=0.1,
                  rng=random.Random(0))
    researcher, annotator = Client(HTTP_HOST="127.0.0.1"), Client(HTTP_HOST="127.0.0.1")
    researcher.force_login(get_user_model().objects.get(username="researcher"))
    annotator.force_login(get_user_model().objects.get(username="annotator0"))
    clients = {"/progress/": researcher, f"/progress/versions/{args.versions - 1}/": researcher, "/me/": annotator}
    pages = {url: time_page(client, url, args.runs) for url, client in tqdm(clients.items(), desc="rendering")}

    lines = [SECTION, "", f"Command: `{command_line()}`", "", *machine_lines(),
             f"- Data: {counts['labels']:,} labels on {counts['comparisons']:,} comparisons (30% cross-version, "
             f"10% labeled by two of {args.annotators} annotators), {args.versions} policy versions; SQLite.",
             "", f"| page | median | worst of {args.runs} |", "|---|---|---|"]
    lines += [f"| `{url}` | {median * 1000:.0f} ms | {worst * 1000:.0f} ms |" for url, (median, worst) in pages.items()]
    lines += ["", "Each render is the whole view through Django's test client: the queries, the win rates, "
              "agreement and Bradley–Terry fit, and the template. `/me/` is one annotator's page "
              f"(about {counts['labels'] // args.annotators:,} labels)."]
    replace_section(SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
