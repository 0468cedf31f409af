from __future__ import annotations

import pytest

from training import services
from training.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_is_marked_failed_when_the_broker_is_unreachable():
    """Never silently run inline, never leave a job pending forever. Outside the worker
    tests nothing listens on the test broker's port, so the broker is down here."""
    run = services.create_run("default", "unused")
    job = services.request_generation(run, run.base_version, prompt_count=1)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "could not reach the task queue" in job.error
