"""Webhooks (webhooks/): list, make (the secret comes back this once), delete, test, and
a hook's delivery log. Researchers only."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from training.models import Run
from webhooks import services
from webhooks.models import SUBSCRIBABLE, Webhook, WebhookDelivery

router = Router(tags=["webhooks"], auth=staff_token)
DELIVERIES_LISTED = 200


class WebhookIn(Schema):
    url: str = Field(max_length=2000, description="https://… (http:// only to a loopback address in development)")
    events: list[str] = Field(min_length=1, description=f"any of: {', '.join(SUBSCRIBABLE)}")
    name: str = Field("", max_length=100)
    run_id: int | None = Field(None, description="only this run's events; empty: every run's")
    every_labels: int = Field(0, ge=0, description="labels.counted fires at each multiple of this many labels")


class WebhookOut(Schema):
    id: int
    name: str
    url: str
    events: list[str]
    run_id: int | None
    every_labels: int
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret, returned this once and never again")


class AttemptOut(Schema):
    at: datetime
    status_code: int | None
    error: str
    milliseconds: int


class DeliveryOut(Schema):
    id: int
    event_id: UUID
    event_type: str
    status: str = Field(description="pending, delivered (never sent again) or failed (out of attempts)")
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[AttemptOut]

    @staticmethod
    def resolve_event_type(delivery: WebhookDelivery) -> str:
        return delivery.event.type

    @staticmethod
    def resolve_attempt_log(delivery: WebhookDelivery) -> list:
        return list(delivery.attempt_log.all())


@router.get("", response=list[WebhookOut], summary="List webhooks")
def list_webhooks(request):
    return Webhook.objects.order_by("name", "pk")


@router.post("", response={201: WebhookCreated, 400: Error, 404: Error}, summary="Create a webhook")
def create_webhook(request, body: WebhookIn):
    """The response carries the signing secret, this once. 400 for a URL that may not
    receive webhooks (plain http, a private or link-local address, ...) or unknown events."""
    run = get_object_or_404(Run, pk=body.run_id) if body.run_id is not None else None
    try:
        hook, secret = services.create_webhook(request.auth, body.name, body.url, body.events, run, body.every_labels)
    except services.WebhookError as error:
        return 400, {"error": str(error)}
    return 201, {**WebhookOut.from_orm(hook).model_dump(), "secret": secret}


@router.delete("/{hook_id}", response={204: None, 404: Error}, summary="Delete a webhook")
def delete_webhook(request, hook_id: int):
    services.delete_webhook(get_object_or_404(Webhook, pk=hook_id))
    return 204, None


@router.post("/{hook_id}/test", response={202: DeliveryOut, 404: Error}, summary="Send a test event")
def test_webhook(request, hook_id: int):
    """A `webhook.test` event to this hook only; poll its deliveries to see the answer."""
    delivery = services.send_test_event(get_object_or_404(Webhook, pk=hook_id))
    return 202, WebhookDelivery.objects.select_related("event").get(pk=delivery.pk)


@router.get("/{hook_id}/deliveries", response={200: list[DeliveryOut], 404: Error},
            summary="List a webhook's deliveries")
def list_deliveries(request, hook_id: int):
    """Newest first, each with its attempts (time, HTTP status, error)."""
    hook = get_object_or_404(Webhook, pk=hook_id)
    return (hook.deliveries.select_related("event").prefetch_related("attempt_log")
            .order_by("-created_at", "-pk")[:DELIVERIES_LISTED])
