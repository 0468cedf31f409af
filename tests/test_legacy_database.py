"""A database made by the code before runs (commit 9015ff2: one global loop, PPO wired in,
`is_simulated` labels) migrates in place and still serves its labels, versions and
pages. The fixture was built at that commit by tests/fixtures/build_legacy_db.py: two
policy versions, a reward model, a finished full round, human, simulated and ranked
labels, a failed and a pending job, and a loop stopped by an annotator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
FIXTURE = PROJECT_DIR / "tests" / "fixtures" / "legacy-9015ff2.sqlite3"

pytestmark = pytest.mark.slow


def test_a_database_from_before_runs_migrates_and_serves_its_pages(tmp_path):
    database = tmp_path / "legacy.sqlite3"
    shutil.copy(FIXTURE, database)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "PREFLOOP_VAR_DIR": str(tmp_path / "var"),
           "DJANGO_ALLOWED_HOSTS": "testserver,localhost", "DJANGO_SECRET_KEY": "legacy-test-key"}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=PROJECT_DIR, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "training.0005_runs... OK" in migrate.stdout and "labeling.0002_origins_and_runs... OK" in migrate.stdout

    check = subprocess.run([sys.executable, "-m", "tests.legacy_pages"], cwd=PROJECT_DIR, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    found = json.loads(check.stdout.strip().splitlines()[-1])

    assert set(found["status"].values()) == {200}, found["status"]
    # The single loop is the default run, still stopped by the annotator who stopped it.
    name, method, recipe, head, base, paused, reason, has_config = found["run"]
    assert (name, method, recipe, head, base, paused, reason) == ("default", "ppo", "rlhf", 1, 0, True, "legacy stop")
    assert has_config  # complete method settings, from the defaults
    assert found["versions"] == [[0, "default", ""], [1, "default", "ppo"]]
    assert found["reward_models"] == [[1, "default"]]
    assert found["rounds"] == [[1, "rlhf", "done", "succeeded"]]
    # A PPO job is now a policy update; the job still pending at upgrade is cancelled.
    assert found["jobs"] == [["train_reward", "succeeded"], ["policy_update", "succeeded"],
                             ["generate", "succeeded"], ["evaluate", "succeeded"],
                             ["policy_update", "failed"], ["train_reward", "cancelled"]]
    assert found["labels"] == {"human": 11, "simulated": 3} and found["comparisons_without_run"] == 0
    # People's v1-vs-v0 judgements (4 by ann, 1 tie by bea) and the old reward scores still count.
    assert found["human_v1_vs_v0"] == 5 and found["rm_judge"] == 1
    assert found["raw_export_rows"] == 14 and found["raw_origin"] == "human"
    assert found["next_for_ann"] is not None  # the open comparison is still in the queue
    assert found["version_page_mentions_ppo"]
