"""Run inside a process whose DATABASE_URL is a migrated copy of
tests/fixtures/legacy-9015ff2.sqlite3 (see test_legacy_database.py; run as
`python -m tests.legacy_pages`): every page still serves what the old database held.
Prints one JSON line of what it found."""

import json
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from labeling.models import Comparison, Label  # noqa: E402
from training.models import Job, PolicyVersion, RewardModelVersion, Round, Run  # noqa: E402

setup_test_environment()  # responses keep their template context
users = get_user_model().objects
users.filter(username="rita").update(is_superuser=True)  # staff in the fixture; the admin pages need rights
researcher, annotator = Client(), Client()
researcher.force_login(users.get(username="rita"))
annotator.force_login(users.get(username="ann"))
run = Run.objects.get()
pages = {url: researcher.get(url) for url in (
    "/researcher/", f"/runs/{run.pk}/", "/progress/", "/progress/rounds/1/", "/progress/versions/0/",
    "/progress/versions/1/", "/export/labels.jsonl?raw=1", "/admin/training/run/", "/admin/labeling/label/")}
pages["/me/"] = annotator.get("/me/")
pages["/label/api/next"] = annotator.post("/label/api/next")  # a POST: it takes a lease
progress = pages["/progress/"]
raw = b"".join(pages["/export/labels.jsonl?raw=1"].streaming_content).decode().splitlines()
print(json.dumps({
    "status": {url: response.status_code for url, response in pages.items()},
    "run": [run.name, run.method, run.recipe, run.head.number, run.base_version.number, run.paused,
            run.pause_reason, bool(run.method_config)],
    "versions": list(PolicyVersion.objects.values_list("number", "run__name", "method")),
    "reward_models": list(RewardModelVersion.objects.values_list("number", "run__name")),
    "rounds": list(Round.objects.values_list("number", "recipe", "stage", "status")),
    "jobs": list(Job.objects.order_by("pk").values_list("kind", "status")),
    "labels": dict(Label.objects.values_list("origin").annotate(n=django.db.models.Count("id"))),
    "comparisons_without_run": Comparison.objects.filter(run=None).count(),
    "human_v1_vs_v0": progress.context["win_rates"][0].human_vs_base.n,
    "rm_judge": progress.context["win_rates"][0].judge,
    "raw_export_rows": len(raw), "raw_origin": json.loads(raw[-1])["origin"],
    "next_for_ann": (pages["/label/api/next"].json()["comparison"] or {}).get("id"),
    "version_page_mentions_ppo": "trained by <b>PPO</b>" in pages["/progress/versions/1/"].content.decode(),
}))
