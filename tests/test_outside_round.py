"""The outside round (scripts/outside_round.py, docs/outside-trainer.md) against a live
PrefLoop: a script that knows only the REST API and TRL pulls the run's pairs, trains
DPO on the tiny model, pushes the adapter, and its answers enter the labeling queue;
labels given through the API come back by cursor.

The server is pytest-django's live_server, in this process. PrefLoop's generation job
would go to Celery through redis; here the broker is replaced by a list (the one thing
outside this process), and this test plays the gpu worker: it runs each job the server
sends with `run_job_now`, as `training.tasks.run_job` would."""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.services import create_token
from labeling import services as labeling
from labeling.models import Comparison, Completion, Label, Prompt
from labeling.services import LabelInput
from training import services
from training.models import OUTSIDE_METHOD, Job, PolicyVersion
from training.services import jobs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def sent_jobs(monkeypatch) -> queue.Queue:
    """Job ids the server sends to the broker."""
    sent: queue.Queue = queue.Queue()
    monkeypatch.setattr(jobs, "send_job", lambda job: sent.put(job.pk))
    return sent


def labeled_run(tiny_model_dir, annotator) -> services.Run:
    """A run on the tiny model with four labeled comparisons of its base's answers and
    prompts left to answer."""
    run = services.create_run("outside", str(tiny_model_dir))
    for i in range(8):
        prompt = Prompt.objects.create(messages=[{"role": "user", "content": f"Say something about {i}."}])
        if i < 4:
            answers = [Completion.objects.create(prompt=prompt, policy_version=run.base_version, text=text)
                       for text in (f"{i} is a fine number.", "no")]
            comparison = labeling.create_comparison(run, prompt, answers, source="initial", rng=random.Random(i))
            labeling.submit_label(annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    return run


def test_an_outside_round_puts_its_answers_in_the_queue_and_pulls_the_labels_they_got(
        live_server, people, settings, tmp_path, tiny_model_dir, sent_jobs):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PREFLOOP_MAX_NEW_TOKENS, settings.PREFLOOP_OVERLAP_SHARE, settings.PREFLOOP_EVAL_PROMPTS = 6, 0.0, 0
    settings.PREFLOOP_UNDO_SECONDS = 0  # labels are pulled once they can no longer be undone: at once, here
    run = labeled_run(tiny_model_dir, people.researcher)
    first_labels = set(Label.objects.values_list("pk", flat=True))
    script = subprocess.Popen(
        [sys.executable, "scripts/outside_round.py", "--api", f"{live_server.url}/api/v1",
         "--token", create_token(people.researcher, "trainer")[1], "--run", str(run.pk),
         "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "round"),
         "--cursor-file", str(tmp_path / "cursor"), "--compare-prompts", "2",
         "--label-as", create_token(people.annotator, "labels")[1], "--timeout", "300"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ran = []
    deadline = time.monotonic() + 600
    while script.poll() is None and time.monotonic() < deadline:  # the gpu worker
        try:
            ran.append(services.run_job_now(Job.objects.get(pk=sent_jobs.get(timeout=0.5))))
        except queue.Empty:
            continue
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err[-3000:]
    did = json.loads(out.strip().splitlines()[-1])

    version = PolicyVersion.objects.get(number=did["version"])
    assert (version.method, version.parent, version.run) == (OUTSIDE_METHOD, run.base_version, run)
    assert version.inputs["note"] == "outside_round.py: DPO, 1 step(s) on 4 pairs" and did["trained_on_pairs"] == 4
    assert [job.pk for job in ran] == [did["job"]] and ran[0].status == Job.Status.SUCCEEDED
    # Its answers entered the queue: two per prompt, and its first against its parent's.
    theirs = set(Comparison.objects.filter(items__completion__policy_version=version))
    assert sorted(c.source for c in theirs) == ["cross_version"] * 2 + ["policy"] * 2
    # Labels came back through the API from the annotator, and the cursor pulled exactly those.
    given = Label.objects.exclude(pk__in=first_labels)
    assert did["labeled"] == given.count() == 4
    assert set(given.values_list("comparison", flat=True)) == {c.pk for c in theirs}
    assert did["new_labels"] == sorted(given.values_list("pk", flat=True))
    assert int((tmp_path / "cursor").read_text()) == did["cursor"] == max(did["new_labels"])
