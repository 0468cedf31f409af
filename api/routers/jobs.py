"""Background jobs (generation, training, evaluation), read from the database as the
pages read them. Researchers only."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from training import services
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
    can_be_cancelled: bool = Field(description="pending, or running and not cancelled yet")
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


@router.post("/{job_id}/cancel", response={200: JobOut, 400: Error, 404: Error}, summary="Cancel a job")
def cancel_job(request, job_id: int):
    """A pending job is cancelled at once. A running one stops at its next progress step
    (or as it is about to publish) and publishes nothing; until then its `status` stays
    running and `status_text` says it is stopping. Poll it as any job. 400 when it has
    already finished."""
    job = get_object_or_404(Job, pk=job_id)
    try:
        services.cancel_job(job, request.auth)
    except ValueError as error:  # JobNotCancellable
        return 400, {"error": str(error)}
    return 200, Job.objects.select_related("round").get(pk=job.pk)
