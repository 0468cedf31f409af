"""Labeling from a script: the same queue, leases and rules as the labeling page. Open
to every person's token."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from ninja import Router, Schema

from api.auth import person_token
from api.schemas import Error
from labeling import services
from labeling.models import Comparison
from labeling.presenters import comparison_as_text
from labeling.schemas import LabelIn

router = Router(tags=["labels"], auth=person_token)


class Turn(Schema):
    role: str
    content: str


class CompletionText(Schema):
    position: int
    text: str


class RunGuidelines(Schema):
    name: str
    guidelines: str  # Markdown, as staff wrote it


class ComparisonOut(Schema):
    """What the labeling page shows, as plain text (never HTML): no policy version, no
    other person's label."""

    id: int
    run: RunGuidelines
    messages: list[Turn]
    completions: list[CompletionText]


class Counts(Schema):
    labeled: int
    queue: int


class QueueState(Schema):
    comparison: ComparisonOut | None
    counts: Counts
    undone: bool | None = None


class LabelStored(Schema):
    label_id: int
    duplicate: bool


def queue_state(annotator: AbstractBaseUser, comparison: Comparison | None, **extra) -> dict:
    return {
        "comparison": comparison_as_text(comparison) if comparison else None,
        "counts": services.annotator_counts(annotator),
        **extra,
    }


@router.post("/next", response=QueueState, summary="Take the next comparison")
def next_comparison(request):
    """Leases the comparison it returns to you (a POST: it changes the queue). Asking
    again while the lease lives returns the same one; `comparison` is null when the queue
    holds nothing for you."""
    return queue_state(request.auth, services.next_comparison_for(request.auth))


@router.post("", response={200: LabelStored, 400: Error, 409: Error}, summary="Submit a label")
def submit_label(request, label: LabelIn):
    """Submitting the same comparison twice stores one label (`duplicate: true` the
    second time). 409: the comparison was not given to you, or went to someone else."""
    try:
        stored, created = services.submit_label(request.auth, label.to_label_input())
    except services.LeaseError as error:
        return 409, {"error": str(error)}
    except services.LabelError as error:
        return 400, {"error": str(error)}
    return {"label_id": stored.pk, "duplicate": not created}


@router.post("/undo", response={200: QueueState, 409: Error}, summary="Undo your last label")
def undo_label(request):
    """Deletes your latest label (within the undo window) and gives its comparison back
    as `comparison`; `undone: false` when there was nothing to undo."""
    try:
        undone = services.undo_last_label(request.auth)
    except services.UndoRefused as error:
        return 409, {"error": str(error)}
    if undone is None:
        return queue_state(request.auth, services.next_comparison_for(request.auth), undone=False)
    return queue_state(request.auth, undone, undone=True)
