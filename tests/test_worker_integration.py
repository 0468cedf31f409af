"""The generation task end to end: a real redis-server, a real Celery worker process,
the tiny model, and the worker writing into the test database."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from labeling.models import Comparison, Prompt
from labeling.services import next_comparison_for
from tests.processes import running_celery_worker, running_redis, wait_for
from training import services
from training.models import Job, PolicyVersion

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path, tiny_model_dir):
    env = {
        # The worker must write where the test reads: the test database file.
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "PREFLOOP_BASE_MODEL_DIR": str(tiny_model_dir),
        "PREFLOOP_MAX_NEW_TOKENS": "8",
        "PREFLOOP_OVERLAP_SHARE": "0",
        "PREFLOOP_TORCH_THREADS": "1",
    }
    log_path = tmp_path / "worker.log"
    with running_redis(os.environ["REDIS_URL"], tmp_path), running_celery_worker("gpu,train,default", env, log_path):
        yield log_path


def test_generation_runs_on_the_gpu_queue_worker_and_feeds_the_label_queue(worker, tiny_model_dir, people):
    policy = PolicyVersion.objects.create(number=0, base_model_dir=str(tiny_model_dir))
    for i in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Tell me fact {i}."}])

    job = services.request_generation(policy, prompt_count=3, requested_by=people.researcher)

    def finished():
        job.refresh_from_db()
        return job.is_finished

    wait_for(finished, 120, "the generation job", interval=0.5)
    assert job.status == Job.Status.SUCCEEDED, f"{job.error}\n{worker.read_text()[-3000:]}"
    assert job.celery_task_id
    assert "training.tasks.generate_comparisons" in worker.read_text()
    assert Comparison.objects.count() == 3
    served = next_comparison_for(people.annotator)
    assert served is not None and served.prompt.text.startswith("Tell me fact")
