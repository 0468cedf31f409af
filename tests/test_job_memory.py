"""A long-lived worker does not carry one job's models into the next."""

from __future__ import annotations

import gc
import weakref

import pytest

from training import services
from training.ml import loading
from training.ml.loading import PolicyStart
from training.ml.methods import TrainingInputs, method_named
from training.ml.methods import base as method_base
from training.ml.preference_pairs import PreferencePair
from training.models import Job
from training.services import jobs

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_a_finished_job_leaves_no_model_behind(tiny_model_dir, tmp_path, base_run, monkeypatch):
    """A real TRL trainer holds its model in reference cycles: without the runner's
    collection the policy outlives the job (the automatic collector is off here, as it
    may not run for a long while in a worker between jobs)."""
    loaded = []

    def tracked(*args, **kwargs):
        policy, peft_config = loading.trainable_policy(*args, **kwargs)
        loaded.append(weakref.ref(policy))
        return policy, peft_config

    def train_sft(job: Job) -> None:
        method = method_named("sft_chosen")
        pairs = [PreferencePair(group=i, prompt=[{"role": "user", "content": f"say {i}"}], chosen="yes yes",
                                rejected="no") for i in range(8)]
        method.train(TrainingInputs(start=PolicyStart(tiny_model_dir), pairs=pairs), tmp_path / "out",
                     method.config({"batch_size": 4}))
        job.mark_succeeded({})

    monkeypatch.setattr(method_base, "trainable_policy", tracked)
    monkeypatch.setitem(jobs.JOB_TYPES, "memory_probe", jobs.JobType("gpu", train_sft))
    gc.collect()
    gc.disable()
    try:
        job = services.run_job_now(Job.objects.create(kind="memory_probe", run=base_run))
        assert job.status == Job.Status.SUCCEEDED
        assert loaded and loaded[0]() is None  # the policy was freed when the job ended
    finally:
        gc.enable()
