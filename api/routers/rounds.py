"""Rounds: one pass of a run through its recipe. Started on a run (api/routers/runs.py),
read here. Researchers only."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Router, Schema

from api.auth import staff_token
from api.schemas import Error
from training.models import Round

router = Router(tags=["runs and rounds"], auth=staff_token)


class RoundOut(Schema):
    number: int
    run_id: int
    recipe: str
    stages: list[str]
    stage: str
    status: str
    error: str
    policy_before: int
    policy_after: int | None
    job_ids: list[int]
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_policy_before(round_: Round) -> int:
        return round_.policy_before.number

    @staticmethod
    def resolve_policy_after(round_: Round) -> int | None:
        return round_.policy_after.number if round_.policy_after_id else None

    @staticmethod
    def resolve_job_ids(round_: Round) -> list[int]:
        """One job per stage started so far, oldest first: the last is the one to poll."""
        return list(round_.jobs.order_by("created_at", "pk").values_list("pk", flat=True))


def round_with_versions():
    return Round.objects.select_related("policy_before", "policy_after")


@router.get("/{number}", response={200: RoundOut, 404: Error}, summary="Read a round")
def round_detail(request, number: int):
    """`status` is running, succeeded or failed; `stage` is where it is now."""
    return get_object_or_404(round_with_versions(), number=number)
