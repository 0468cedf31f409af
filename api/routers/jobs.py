"""Background jobs (generation, training, evaluation), read from the database as the
pages read them. Researchers only."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from training.models import Job

router = Router(tags=["jobs"], auth=staff_token)


class JobOut(Schema):
    id: int
    kind: str
    run_id: int | None = Field(description="empty for work of no run (importing a dataset)")
    round_number: int | None
    status: str
    status_text: str
    step: int
    total_steps: int
    progress: float
    eta_seconds: float | None
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_round_number(job: Job) -> int | None:
        return job.round.number if job.round_id else None


@router.get("/{job_id}", response={200: JobOut, 404: Error}, summary="Read a job's status")
def job_status(request, job_id: int):
    """`status` is pending, running, succeeded, failed or cancelled; poll until it is one
    of the last three. `progress` runs from 0 to 1."""
    return get_object_or_404(Job.objects.select_related("round"), pk=job_id)
