"""Webhooks: making and deleting hooks, recording events where things happen, and
delivering them.

Events are written in an outbox: `record_event` adds the event row and one delivery row
per hook that wants it, in the caller's transaction (the one that published the version
or failed the round), and asks for the deliveries to be sent once that transaction
commits. So an event exists if and only if what it tells of happened, and a broker or a
receiver that is down loses nothing: a delivery stays pending, retried with a doubling
wait (`attempt_delivery`), and the sweep (Celery beat, `sweep_deliveries`) sends again
any pending delivery whose message was lost. A delivery marked delivered is never sent
again; a receiver that answered 2xx too late for us to hear it may see an event twice,
and dedupes it by its id (X-PrefLoop-Event-Id).

This module sits above training.models and labeling.models and below the training
services, which call it (training/services/loop.py, rounds.py, artifacts.py)."""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from labeling.models import Label
from training.models import Job, PolicyVersion, RewardModelVersion, Round, Run
from webhooks.addresses import Target, WebhookUrlError, resolve
from webhooks.models import SUBSCRIBABLE, DeliveryAttempt, EventType, Webhook, WebhookDelivery, WebhookEvent
from webhooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

log = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.tasks.deliver_webhook"
DELIVERY_QUEUE = "default"  # light work: a POST, no model
SWEEP_GRACE_SECONDS = 60
"""A pending delivery this long past its time has lost its message: the sweep sends it again."""
RESPONSE_BYTES_KEPT = 300


class WebhookError(ValueError):
    """A hook cannot be made as asked; the message says why."""


# --- hooks


def check_webhook(url: str, events: list[str], every_labels: int) -> None:
    try:
        resolve(url)
    except WebhookUrlError as error:
        raise WebhookError(str(error)) from None
    unknown = sorted(set(events) - set(SUBSCRIBABLE))
    if unknown:
        raise WebhookError(f"unknown event types: {', '.join(unknown)} (known: {', '.join(SUBSCRIBABLE)})")
    if not events:
        raise WebhookError("choose at least one event")
    if EventType.LABELS_COUNTED in events and every_labels < 1:
        raise WebhookError("labels.counted needs every_labels, how many labels between two events (1 or more)")


def create_webhook(by, name: str, url: str, events: list[str], run: Run | None = None,
                   every_labels: int = 0) -> tuple[Webhook, str]:
    """A new hook and its secret, which the caller shows this once."""
    url = url.strip()
    check_webhook(url, events, every_labels)
    secret = secrets.token_hex(32)
    hook = Webhook.objects.create(name=name.strip() or url, url=url, events=sorted(set(events)), run=run,
                                  every_labels=every_labels if EventType.LABELS_COUNTED in events else 0,
                                  secret=secret, created_by=by)
    return hook, secret


def delete_webhook(hook: Webhook) -> None:
    """The hook, its deliveries and their log: nothing more is sent to it."""
    hook.delete()


def send_test_event(hook: Webhook) -> WebhookDelivery:
    """A `webhook.test` event to this hook only, delivered like any other."""
    with transaction.atomic():
        return record_event(EventType.TEST, f"webhook.test:{hook.pk}:{time.time_ns()}",
                            {"webhook": {"id": hook.pk, "name": hook.name}}, run_id=hook.run_id, hooks=[hook])[0]


# --- events, written where things happen


def site_url(path: str) -> str:
    """`path` as the receiver should open it: on PREFLOOP_SITE_URL when it is set."""
    return settings.PREFLOOP_SITE_URL.rstrip("/") + path


def run_data(run: Run) -> dict:
    return {"id": run.pk, "name": run.name, "url": site_url(reverse("run_detail", args=[run.pk]))}


def record_event(event_type: str, key: str, data: dict, run_id: int | None = None,
                 hooks: list[Webhook] | None = None) -> list[WebhookDelivery]:
    """The event and a delivery to each hook that wants it (`hooks`: these only), in the
    caller's transaction, sent once it commits. Nothing is written when no hook wants it,
    nor a second time for the same `key`."""
    if hooks is None:
        hooks = [hook for hook in Webhook.objects.filter(Q(run=None) | Q(run_id=run_id))
                 if hook.wants(event_type, run_id)]  # a handful of rows; JSON `contains` is not on SQLite
    if not hooks:
        return []
    try:
        with transaction.atomic():  # a savepoint: a repeated key leaves the caller's transaction usable
            event = WebhookEvent.objects.create(type=event_type, key=key, run_id=run_id, data=data)
    except IntegrityError:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(event=event, webhook=hook) for hook in hooks])
    ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: enqueue_deliveries(ids))
    return deliveries


def record_published(kind: str, row) -> None:
    """In the transaction that registers a published artifact (training/services/artifacts.py)."""
    run = row.run
    if isinstance(row, RewardModelVersion):
        parent = row.parent.number if row.parent_id else None
        record_event(EventType.REWARD_MODEL_PUBLISHED, f"reward_model.published:{row.pk}", {
            "run": run_data(run),
            "reward_model": {"id": row.pk, "number": row.number, "update": row.update, "parent": parent,
                             "label_count": row.label_count, "heldout_accuracy": row.heldout_accuracy}},
            run_id=run.pk)
    elif isinstance(row, PolicyVersion):
        record_event(EventType.POLICY_VERSION_PUBLISHED, f"policy_version.published:{row.pk}", {
            "run": run_data(run),
            "policy_version": {"id": row.pk, "number": row.number, "method": row.method,
                               "parent": row.parent.number if row.parent_id else None,
                               "job": row.job_id,
                               "url": site_url(reverse("version_detail", args=[row.number]))}},
            run_id=run.pk)
    else:
        log.warning("no webhook event for a published %s", kind)


def record_round_outcome(round_: Round) -> None:
    """In the transaction that finished or failed the round (training/services/rounds.py)."""
    if round_.status == Round.Status.SUCCEEDED:
        event_type = EventType.ROUND_FINISHED
    elif round_.status == Round.Status.FAILED:
        event_type = EventType.ROUND_FAILED
    else:
        return
    record_event(event_type, f"{event_type}:{round_.pk}", {
        "run": run_data(round_.run),
        "round": {"number": round_.number, "recipe": round_.recipe, "status": round_.status,
                  "error": round_.error, "policy_before": round_.policy_before.number,
                  "policy_after": round_.policy_after.number if round_.policy_after_id else None,
                  "reward_model": round_.reward_model.number if round_.reward_model_id else None,
                  "url": site_url(reverse("round_detail", args=[round_.number])),
                  "api_url": site_url(f"/api/v1/rounds/{round_.number}")}},
        run_id=round_.run_id)


def record_job_failure(job: Job) -> None:
    """A job follower (training/services/loop.py): every failed job passes there, whichever
    path failed it; the key records it once however often it is announced."""
    if job.status != Job.Status.FAILED:
        return
    with transaction.atomic():
        record_event(EventType.JOB_FAILED, f"job.failed:{job.pk}", {
            "run": run_data(job.run) if job.run_id else None,
            "job": {"id": job.pk, "kind": job.kind, "error": job.error, "attempts": job.attempts,
                    "round": job.round.number if job.round_id else None,
                    "api_url": site_url(f"/api/v1/jobs/{job.pk}")}},
            run_id=job.run_id)


def record_label_count(run_id: int) -> None:
    """After a label is committed (training/services/loop.py): each hook counting this
    run's labels hears when the count (labels on the run's comparisons, skips left out)
    has passed its next multiple of N. Counted from the rows, so a lost call is made up by
    the next label, and keyed by the multiple, so two labels at once fire it once."""
    hooks = [hook for hook in Webhook.objects.filter(Q(run=None) | Q(run_id=run_id), every_labels__gt=0)
             if hook.wants(EventType.LABELS_COUNTED, run_id)]
    if not hooks:
        return
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return
    count = Label.objects.filter(comparison__run=run).exclude(choice=Label.Choice.SKIP).count()
    with transaction.atomic():
        for hook in hooks:
            reached = count // hook.every_labels * hook.every_labels
            if reached:
                record_event(EventType.LABELS_COUNTED, f"labels.counted:{hook.pk}:{run_id}:{reached}", {
                    "run": run_data(run), "labels": reached, "every": hook.every_labels}, run_id=run_id, hooks=[hook])


# --- delivering


def enqueue_deliveries(ids: list[int], countdown: float = 0) -> None:
    """Ask a worker to send each delivery. A broker that is down loses nothing: the
    deliveries stay pending and the sweep sends them."""
    from prefloop.celery import app

    for delivery_id in ids:
        try:
            app.send_task(DELIVER_TASK, args=[delivery_id], queue=DELIVERY_QUEUE, countdown=countdown or None)
        except Exception:  # kombu raises several types for an unreachable broker
            log.exception("could not enqueue webhook delivery %s; the sweep sends it", delivery_id)
            return


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str
    milliseconds: int


def body_of(event: WebhookEvent) -> bytes:
    """The same bytes at every attempt: sorted keys, no spaces."""
    return json.dumps(event.payload(), sort_keys=True, separators=(",", ":")).encode()


def post(target: Target, body: bytes, headers: dict[str, str]) -> Answer:
    """One POST to the checked address (no redirects followed: a 3xx is a failure)."""
    timeout = settings.PREFLOOP_WEBHOOK_TIMEOUT_SECONDS
    if target.scheme == "https":
        connection = http.client.HTTPSConnection(target.host, target.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    # To the address that was checked; TLS still verifies the certificate for the host name.
    connection._create_connection = lambda address, timeout=timeout, source_address=None: socket.create_connection(
        (target.address, target.port), timeout, source_address)
    started = time.monotonic()
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read(RESPONSE_BYTES_KEPT).decode("utf-8", "replace")
        error = "" if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}: {text}".strip()
        return Answer(response.status, error, int((time.monotonic() - started) * 1000))
    except (OSError, http.client.HTTPException) as error:  # refused, timed out, TLS, a broken answer
        return Answer(None, f"{type(error).__name__}: {error}", int((time.monotonic() - started) * 1000))
    finally:
        connection.close()


def claim_delivery(delivery_id: int, now) -> bool:
    """Compare-and-swap: of two tasks for one delivery (a retry and the sweep's resend)
    exactly one sends it; a delivered or failed one is never sent."""
    lease = now + timedelta(seconds=2 * settings.PREFLOOP_WEBHOOK_TIMEOUT_SECONDS + 30)
    return bool(WebhookDelivery.objects.filter(
        Q(claimed_until=None) | Q(claimed_until__lt=now),
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now,
    ).update(claimed_until=lease))


def attempt_delivery(delivery_id: int, now=None) -> float | None:
    """Send one pending, due delivery once (unless another task has it) and record the
    attempt. Returns the seconds until its next attempt when it failed and has attempts
    left, else None. `now` is the scheduling clock (the signature's timestamp is always
    the real time, which receivers check)."""
    now = now or timezone.now()
    if not claim_delivery(delivery_id, now):
        return None
    delivery = WebhookDelivery.objects.select_related("event", "webhook").filter(pk=delivery_id).first()
    if delivery is None:  # its hook was deleted just now
        return None
    hook, event = delivery.webhook, delivery.event
    body, timestamp = body_of(event), int(time.time())
    try:
        target = resolve(hook.url)  # again: what the name resolves to may have changed
    except WebhookUrlError as error:
        answer = Answer(None, f"refused: {error}", 0)
    else:
        answer = post(target, body, {
            "Content-Type": "application/json", "User-Agent": "PrefLoop-Webhooks/1",
            EVENT_ID_HEADER: str(event.id), EVENT_TYPE_HEADER: event.type, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(hook.secret, timestamp, body)})
    with transaction.atomic():
        DeliveryAttempt.objects.create(delivery=delivery, at=now, status_code=answer.status_code,
                                       error=answer.error, milliseconds=answer.milliseconds)
        if answer.status_code is not None and not answer.error:
            delivery.record_success(now, answer.status_code)
            return None
        delivery.record_failure(now, answer.status_code, answer.error)
    log.info("webhook delivery %s to %s failed (attempt %s): %s", delivery.pk, hook.url, delivery.attempts,
             answer.error)
    if delivery.status != WebhookDelivery.Status.PENDING:
        return None
    return (delivery.next_attempt_at - now).total_seconds()


def due_deliveries(now, grace_seconds: float = 0):
    """Pending deliveries whose next attempt was due `grace_seconds` ago or earlier, and
    that no task holds."""
    return (WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING,
                                           next_attempt_at__lte=now - timedelta(seconds=grace_seconds))
            .filter(Q(claimed_until=None) | Q(claimed_until__lt=now)).order_by("next_attempt_at", "pk"))


def sweep_deliveries(now=None) -> list[int]:
    """Run by Celery beat with the job sweep: pending deliveries well past their time (their
    message was lost: a broker down at commit, a worker killed with a retry in hand) are
    sent again. Sending one twice is harmless: claim_delivery lets one task send it."""
    now = now or timezone.now()
    ids = list(due_deliveries(now, SWEEP_GRACE_SECONDS).values_list("pk", flat=True)[:1000])
    if ids:
        log.warning("webhook sweep: sending %s pending deliveries again", len(ids))
        enqueue_deliveries(ids)
    return ids


def redeliver(delivery: WebhookDelivery) -> bool:
    """A failed delivery (out of attempts) pending again, with fresh attempts; staff's
    button on the hook's page. A delivered one is never sent again."""
    again = WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.FAILED).update(
        status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), claimed_until=None)
    if again:
        transaction.on_commit(lambda: enqueue_deliveries([delivery.pk]))
    return bool(again)
