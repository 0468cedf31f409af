"""Celery entry points of the webhooks (webhooks/services.py does the work)."""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name=services.DELIVER_TASK, ignore_result=True)
def deliver_webhook(delivery_id: int) -> None:
    """Send one delivery; after a failure with attempts left, the next attempt is a new
    message due after the wait (the sweep re-sends it if that message is lost)."""
    wait = services.attempt_delivery(delivery_id)
    if wait is not None:
        services.enqueue_deliveries([delivery_id], countdown=wait)


@shared_task(name="webhooks.tasks.sweep_webhooks", ignore_result=True)
def sweep_webhooks() -> list[int]:
    """Run by Celery beat every PREFLOOP_SWEEP_SECONDS."""
    return services.sweep_deliveries()
