"""Jobs that converge by themselves after the broker or a worker failed.

A job row is the truth; a broker message only asks a worker to act on it. Three things
can separate the two, and the sweep (Celery beat runs `sweep_jobs` every
PREFLOOP_SWEEP_SECONDS; `manage.py sweep_jobs` runs it once) mends each:

- a **pending job whose message is gone** (redis restarted without its data): sent again
  once it has waited PREFLOOP_JOB_RESEND_SECONDS and the broker holds no message for it;
- a **running job whose worker is silent** (the whole worker was killed, so nothing
  re-delivers the message before redis's visibility timeout, hours later): after
  PREFLOOP_WORKER_LOST_SECONDS without a heartbeat it goes back to pending and is sent
  again, or fails with the reason once it has been started PREFLOOP_JOB_MAX_ATTEMPTS times;
- an **automatic trigger lost to an outage** (the request failed while the broker was
  down, and no new label came since to trigger it again): requested again.

Sending twice is harmless: `training.tasks.run_job` drops a message for a job that a
live worker runs, and a claim is a compare-and-swap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, TextField, Value
from django.db.models.functions import Coalesce, Concat, NullIf
from django.utils import timezone

from training.models import Job, Run
from training.services.jobs import INLINE, JOB_TYPES, announce_finished, send_job

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    resent: list[int] = field(default_factory=list)
    """Pending jobs whose message the broker had lost, sent again."""
    restarted: list[int] = field(default_factory=list)
    """Running jobs whose worker went silent, back to pending and sent again."""
    failed: list[int] = field(default_factory=list)
    """Jobs given up on, with the reason in their error."""
    triggered: list[int] = field(default_factory=list)
    """Reward-model jobs requested for runs whose automatic trigger was lost."""
    cancelled: list[int] = field(default_factory=list)
    """Cancelled jobs whose worker died before it stopped them."""
    broker_error: str = ""
    """Why the broker could not be read or written (the next sweep tries again)."""

    def as_dict(self) -> dict:
        return asdict(self)


def queued_task_ids(queues: set[str], unacked_within: float | None = None) -> set[str]:
    """Task ids of the messages redis holds for these queues: waiting in a queue (at any
    priority), or delivered to a worker and not yet acknowledged less than
    `unacked_within` seconds ago. For a pending job the only such delivery is a
    countdown retry held by a live worker, renewed every PREFLOOP_RM_WAIT_SECONDS; one
    older than that was held by a worker that died, and redis would hand it back only
    after its visibility timeout (hours). Specific to kombu's redis transport, the
    broker PrefLoop runs on."""
    from prefloop.celery import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        channel = connection.default_channel
        client = channel.client
        since = 0 if unacked_within is None else time.time() - unacked_within
        fresh = {tag.decode() if isinstance(tag, bytes) else tag
                 for tag in client.zrangebyscore(channel.unacked_index_key, since, "+inf")}
        raw = [payload for tag, payload in client.hgetall(channel.unacked_key).items()
               if (tag.decode() if isinstance(tag, bytes) else tag) in fresh]
        for queue in queues:
            raw.extend(client.lrange(queue, 0, -1))
            for step in channel.priority_steps:
                if step:
                    raw.extend(client.lrange(f"{queue}{channel.sep}{step}", 0, -1))
    ids = set()
    for payload in raw:
        try:
            message = json.loads(payload)
            if isinstance(message, list):  # unacked entries are [message, exchange, routing key]
                message = message[0]
            ids.add(message.get("headers", {}).get("id") or message.get("properties", {}).get("correlation_id"))
        except (ValueError, TypeError, AttributeError, IndexError):  # not a kombu message: not ours
            continue
    return ids - {None}


def give_up(job: Job, why: str) -> bool:
    """Fail a job that cannot finish, unless it finished meanwhile; the round that waits
    on it hears of it (and fails with the reason)."""
    failed = Job.objects.filter(pk=job.pk, status=job.status, attempts=job.attempts).update(
        status=Job.Status.FAILED, error=why, finished_at=timezone.now())
    if failed:
        job.refresh_from_db()
        announce_finished(job)
    return bool(failed)


def lost_worker_reason(job: Job) -> str:
    silent = job.silent_seconds() or 0.0
    return f"its worker {job.worker or '(unknown)'} went silent ({silent:.0f} s without a heartbeat)"


def cancel_abandoned(job: Job) -> bool:
    """A running job that was cancelled and whose worker died before it could stop:
    cancelled now, not started again to be stopped at its first step."""
    cancelled = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).exclude(
        cancel_requested_at=None).update(
        status=Job.Status.CANCELLED, finished_at=timezone.now(),
        # Who, from the database: the caller's copy may predate the cancel.
        error=Concat(Value("cancelled by "), Coalesce(NullIf("cancelled_by", Value("")), Value("someone")),
                     Value("; its worker stopped before it did"), output_field=TextField()))
    if cancelled:
        job.refresh_from_db()
        announce_finished(job)
    return bool(cancelled)


def restart_silent_job(job: Job, report: SweepReport) -> None:
    """Back to pending and sent again, or failed once it has used its attempts; cancelled
    if a researcher had cancelled it."""
    if cancel_abandoned(job):  # the database says whether it was cancelled, not this old copy
        report.cancelled.append(job.pk)
        return
    why = lost_worker_reason(job)
    if job.attempts >= settings.PREFLOOP_JOB_MAX_ATTEMPTS:
        if give_up(job, f"{why}; it was started {job.attempts} times, the most allowed "
                        f"(PREFLOOP_JOB_MAX_ATTEMPTS)"):
            report.failed.append(job.pk)
        return
    try:
        with transaction.atomic():
            moved = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts,
                                       heartbeat_at=job.heartbeat_at, cancel_requested_at=None).update(
                status=Job.Status.PENDING, error=f"{why}; sent again (attempt {job.attempts + 1})")
    except IntegrityError:  # a reward-model job already waits for this run, with these labels and more
        waiting = Job.objects.filter(kind=job.kind, run=job.run_id, status=Job.Status.PENDING).first()
        if give_up(job, f"{why}; job {waiting.pk if waiting else '?'} waits to train on its labels and newer ones"):
            report.failed.append(job.pk)
        return
    if not moved:
        return  # it spoke up, finished, was taken over or cancelled (the next sweep ends it) meanwhile
    job.refresh_from_db()
    log.warning("job %s: %s; sending it again", job.pk, why)
    try:
        send_job(job)
    except Exception as error:  # broker down: it stays pending, and the next sweep sends it
        report.broker_error = str(error)
    report.restarted.append(job.pk)


def resend_lost_messages(report: SweepReport, now) -> None:
    waited = now - timedelta(seconds=settings.PREFLOOP_JOB_RESEND_SECONDS)
    pending = list(Job.objects.filter(status=Job.Status.PENDING)
                   .filter(Q(queued_at__lte=waited) | Q(queued_at__isnull=True, created_at__lte=waited))
                   .exclude(params__has_key=INLINE))  # its own process runs it
    if not pending:
        return
    try:
        held = queued_task_ids({JOB_TYPES[job.kind].queue for job in pending},
                               unacked_within=settings.PREFLOOP_RM_WAIT_SECONDS + settings.PREFLOOP_JOB_RESEND_SECONDS)
    except Exception as error:  # broker down: nothing can be sent now anyway
        report.broker_error = f"{type(error).__name__}: {error}"
        return
    for job in pending:
        if job.celery_task_id in held:
            continue  # waiting its turn
        log.warning("job %s is pending but the broker has no message for it; sending it again", job.pk)
        try:
            send_job(job)
        except Exception as error:
            report.broker_error = f"{type(error).__name__}: {error}"
            return
        report.resent.append(job.pk)


def request_lost_triggers(report: SweepReport) -> None:
    """Runs whose reward model keeps itself fresh (the automatic trigger on, not paused:
    see rounds.react_to_new_label), whose latest automatic reward-model job (a full
    retrain or a head refit; only refits for an automatic loop, whose rounds make its
    full retrains) never reached the broker (`never_sent`, set by enqueue_on_commit) and
    that have no reward-model job pending or running get the trigger checked again: if
    enough labels wait, it fires now. A job that ran and failed is not requested again,
    or a training that always fails would be retried every minute forever. A round the
    automatic loop lost to an outage failed visibly and is not restarted by itself."""
    from training.services.reward_models import maybe_request_reward_training

    reward_jobs = Job.objects.filter(kind__in=[Job.Kind.TRAIN_REWARD, Job.Kind.REFIT_REWARD])
    busy = reward_jobs.filter(status__in=[Job.Status.PENDING, Job.Status.RUNNING])
    for run in Run.objects.filter(reward_auto_train_labels__gt=0, paused=False).exclude(
            pk__in=busy.values("run_id")):
        kinds = [Job.Kind.REFIT_REWARD] if run.auto_loop else [Job.Kind.TRAIN_REWARD, Job.Kind.REFIT_REWARD]
        # Each kind's latest on its own: a refit sent after a lost full retrain hides nothing.
        latest = [reward_jobs.filter(run=run, kind=kind).order_by("-pk").first() for kind in kinds]
        if not any(job is not None and job.result.get("never_sent") for job in latest):
            continue
        job = maybe_request_reward_training(run, full_retrains=not run.auto_loop)
        if job is not None:
            report.triggered.append(job.pk)


def sweep_jobs(now=None) -> SweepReport:
    """One pass over the jobs (see the module docstring); safe to run anywhere, any
    number of times at once."""
    now = now or timezone.now()
    report = SweepReport()
    silent_since = now - timedelta(seconds=settings.PREFLOOP_WORKER_LOST_SECONDS)
    running = Job.objects.filter(status=Job.Status.RUNNING).filter(
        Q(heartbeat_at__lt=silent_since) | Q(heartbeat_at__isnull=True, started_at__lt=silent_since))
    for job in running:
        restart_silent_job(job, report)
    resend_lost_messages(report, now)
    request_lost_triggers(report)
    if any((report.resent, report.restarted, report.failed, report.triggered, report.cancelled)):
        log.warning("job sweep: %s", report.as_dict())
    return report
