"""Bake-offs: start one from a run's head, read how far it got, promote a candidate.
Researchers only. Rankings by people's judgements are on the bake-off page."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from training import services
from training.ml.methods import METHODS
from training.models import BakeOff, BakeOffCandidate, Run

router = Router(tags=["bake-offs"], auth=staff_token)


class CandidateOut(Schema):
    id: int
    method: str
    job_id: int | None
    version: int | None = Field(description="the policy version it trained, once done")

    @staticmethod
    def resolve_version(candidate: BakeOffCandidate) -> int | None:
        return candidate.version.number if candidate.version_id else None


class BakeOffOut(Schema):
    id: int
    run: int
    start_version: int
    status: str = Field(description="training, evaluating, judging or failed")
    candidates: list[CandidateOut]
    comparisons: int = Field(description="blind comparisons queued for people")
    promoted: int | None = Field(description="the candidate promoted to the run's head")
    error: str
    created_at: datetime

    @staticmethod
    def resolve_run(bakeoff: BakeOff) -> int:
        return bakeoff.run_id

    @staticmethod
    def resolve_start_version(bakeoff: BakeOff) -> int:
        return bakeoff.start.number

    @staticmethod
    def resolve_candidates(bakeoff: BakeOff) -> list[BakeOffCandidate]:
        return list(bakeoff.candidates.select_related("version").order_by("pk"))

    @staticmethod
    def resolve_comparisons(bakeoff: BakeOff) -> int:
        return bakeoff.comparisons.count()

    @staticmethod
    def resolve_promoted(bakeoff: BakeOff) -> int | None:
        return bakeoff.promoted_id


class BakeOffIn(Schema):
    methods: list[str] = Field(min_length=1, description=f"two or more of {', '.join(METHODS)}")


@router.post("/runs/{run_id}", response={201: BakeOffOut, 400: Error, 404: Error}, summary="Start a bake-off")
def start_bakeoff(request, run_id: int, bakeoff_in: BakeOffIn):
    """Every method trains a candidate from the run's head with the same reward model and
    labels (jobs on the gpu queue); then they answer the evaluation prompts and blind
    comparisons go to people. Poll the bake-off, or each candidate's job at /jobs/{id}."""
    run = get_object_or_404(Run, pk=run_id)
    try:
        bakeoff = services.start_bakeoff(run, bakeoff_in.methods, requested_by=request.auth)
    except ValueError as error:  # BakeOffError, or an unknown method
        return 400, {"error": str(error)}
    return 201, bakeoff


@router.get("/{bakeoff_id}", response={200: BakeOffOut, 404: Error}, summary="Read a bake-off")
def read_bakeoff(request, bakeoff_id: int):
    return get_object_or_404(BakeOff.objects.select_related("start"), pk=bakeoff_id)


@router.post("/candidates/{candidate_id}/promote", response={200: BakeOffOut, 400: Error, 404: Error},
             summary="Promote a candidate to the run's head")
def promote(request, candidate_id: int):
    """Moves the run's head to the candidate's version and changes nothing else."""
    candidate = get_object_or_404(BakeOffCandidate.objects.select_related("bakeoff"), pk=candidate_id)
    try:
        services.promote_candidate(candidate)
    except ValueError as error:
        return 400, {"error": str(error)}
    return BakeOff.objects.select_related("start").get(pk=candidate.bakeoff_id)
