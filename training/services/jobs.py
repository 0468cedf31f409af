"""Getting jobs to the workers, and handing finished ones to the loop.

Every kind of job is a peer in `JOB_TYPES`: the queue it runs on, the function that does
the work, and the claim that decides whether it may start now (by default: yes). The
modules that own a kind register it with `@job_type(...)`; one Celery task
(`training.tasks.run_job`) runs any of them. When a job finishes, `announce_finished`
hands it to the loop's `on_job_finished` (training/services/loop.py), which lists what
follows. The loop imports the modules that import this one, so it is handed in once by
TrainingConfig.ready (`follow_finished_jobs`) instead of imported here.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from training.models import Job

log = logging.getLogger(__name__)

RUN_JOB_TASK = "training.tasks.run_job"


def _nobody_follows(job: Job) -> None:
    """Before the app is ready (a bare import), nothing follows a job."""


_job_follower: Callable[[Job], None] = _nobody_follows


def follow_finished_jobs(follower: Callable[[Job], None]) -> None:
    """Make `follower` (the loop's on_job_finished) the one that hears of finished jobs."""
    global _job_follower
    _job_follower = follower


def this_worker() -> str:
    """host:pid of this process, as written on the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_is_alive(job: Job) -> bool:
    """Whether the process that runs a running job is still there: a recent heartbeat,
    and on this host the kernel still knows its pid (a worker whose child was killed
    gets the message back at once, long before the heartbeat goes stale)."""
    host, _, pid = job.worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another user
    return (job.silent_seconds() or 0.0) < settings.PREFLOOP_WORKER_LOST_SECONDS


def claim_job(job: Job) -> bool:
    """The default claim: a pending job starts; a running one starts again if its
    worker died (the broker handed the message out again). Exactly one of two racing
    deliveries wins (Job.mark_running is a compare-and-swap)."""
    job.refresh_from_db()
    if job.is_finished:
        return False
    if job.status == Job.Status.RUNNING:
        log.warning("job %s was running when its worker (%s) died; starting it again", job.pk, job.worker)
    return job.mark_running(this_worker())


@dataclass(frozen=True)
class JobType:
    queue: str
    """Celery queue: `gpu` for work that holds a policy, `train` for reward models."""
    run: Callable[[Job], object]
    """Does the work of a claimed job and marks it succeeded or failed."""
    claim: Callable[[Job], bool] = claim_job
    """Marks the job running and returns True, or False when it must wait its turn."""


JOB_TYPES: dict[str, JobType] = {}


def job_type(kind: str, queue: str, claim: Callable[[Job], bool] = claim_job):
    """Register the decorated function as the runner of jobs of this kind."""

    def register(run: Callable[[Job], object]):
        JOB_TYPES[kind] = JobType(queue, run, claim)
        return run

    return register


def announce_finished(job: Job) -> None:
    """Hand a job that succeeded, failed or was cancelled to the loop (loop.on_job_finished
    says what follows). Maybe more than once for the same job: a redelivered task
    announces it again, and every follower is idempotent."""
    if job.is_finished:
        _job_follower(job)


def send_job(job: Job) -> None:
    """Send the job's message to its queue now (kombu's error if the broker is
    unreachable). The task id and the time are kept, so the job sweep can tell a message
    the broker lost from one that waits its turn."""
    from prefloop.celery import app

    result = app.send_task(RUN_JOB_TASK, args=[job.pk], queue=JOB_TYPES[job.kind].queue)
    job.celery_task_id, job.queued_at = result.id or "", timezone.now()
    Job.objects.filter(pk=job.pk).update(celery_task_id=job.celery_task_id, queued_at=job.queued_at)


_kept = threading.local()


@contextmanager
def jobs_kept_for_this_process():
    """Inside this block, jobs that would be sent to the broker (a round's stages, one
    after another) are appended to the yielded list instead, and the caller runs them
    with `run_job_now` once the call that queued them returned. An experiment's inline
    mode, chosen explicitly; never a fallback for a broker that is down."""
    kept: list[Job] = []
    outer = getattr(_kept, "jobs", None)
    _kept.jobs = kept
    try:
        yield kept
    finally:
        _kept.jobs = outer


def enqueue_on_commit(job: Job) -> None:
    """Send the job to its queue once its row is committed. If the broker is unreachable
    the job is marked failed with that reason instead of waiting forever as pending (an
    automatic trigger lost that way is requested again by the job sweep)."""
    kept = getattr(_kept, "jobs", None)
    if kept is not None:
        # No on_commit here: the caller runs it only after the queuing call returned,
        # and a test's outer transaction would otherwise hold it back forever.
        kept.append(job)
        return

    def send() -> None:
        try:
            send_job(job)
        except Exception as error:  # kombu raises several types for an unreachable broker
            log.exception("could not enqueue job %s", job.pk)
            # Only if still pending: a researcher may have cancelled it while kombu tried.
            # never_sent: the job sweep may request it again.
            if Job.objects.filter(pk=job.pk, status=Job.Status.PENDING).update(
                    status=Job.Status.FAILED, error=f"could not reach the task queue: {error}",
                    finished_at=timezone.now(), result={**job.result, "never_sent": True}):
                job.refresh_from_db()
                announce_finished(job)  # a round waiting on it fails too

    transaction.on_commit(send)


class JobNotCancellable(ValueError):
    """The job finished before the cancel came."""


def cancel_job(job: Job, by) -> str:
    """A researcher's cancel (the views check who may). A pending job is cancelled at
    once: when a worker takes its message, it finds the job finished. A running one is
    asked to stop: its worker stops at its next progress step, or as it is about to
    publish, publishes nothing and records it cancelled (Job.report_progress,
    artifacts.register). A round or bake-off waiting on it hears of it as of a failure.
    Returns what happened, in words."""
    now, name = timezone.now(), getattr(by, "username", str(by))
    # Compare-and-swap on the status: between two tries a worker may claim it (pending →
    # running) or the job sweep send it again (running → pending).
    for _ in range(3):
        if Job.objects.filter(pk=job.pk, status=Job.Status.PENDING).update(
                status=Job.Status.CANCELLED, error=f"cancelled by {name} before it started", finished_at=now,
                cancel_requested_at=now, cancelled_by=name):
            job.refresh_from_db()
            announce_finished(job)
            return f"Job {job.pk} is cancelled."
        if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, cancel_requested_at=None).update(
                cancel_requested_at=now, cancelled_by=name):
            job.refresh_from_db()
            return f"Job {job.pk} stops at its next step; a training publishes nothing."
        job.refresh_from_db()
        if job.status == Job.Status.RUNNING:
            return f"Job {job.pk} was already cancelled by {job.cancelled_by}; it stops at its next step."
        if job.is_finished:
            break
    raise JobNotCancellable(f"job {job.pk} has already finished ({job.status}); there is nothing to cancel")


INLINE = "inline"
"""A job param: the process that created the job runs it (a command's inline mode), so
the job sweep never sends it to the broker, however long it waits its turn there."""


def keep_for_this_process(job: Job) -> None:
    """Mark a pending job as one this process will run with `run_job_now`."""
    job.params = {**job.params, INLINE: True}
    Job.objects.filter(pk=job.pk).update(params=job.params)


@contextmanager
def heartbeat(job: Job, interval: float | None = None):
    """While the body runs, a thread writes the job's heartbeat every `interval`
    seconds, so a worker that dies (SIGKILL, power loss) is noticed by its silence. Only
    the attempt this process started is touched: once the sweep sent the job again, a
    stray old worker no longer speaks for it."""
    if connection.in_atomic_block:
        # The caller's transaction is open (a test, a script): no other process sees this
        # job running, so none can take it for dead, and on SQLite the thread's writes
        # would only wait on the caller's lock.
        yield
        return
    interval = interval or settings.PREFLOOP_HEARTBEAT_SECONDS
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(
                    heartbeat_at=timezone.now())
            except Exception:  # a locked or unreachable database: the next beat tries again
                log.exception("heartbeat of job %s failed", job.pk)
                connection.close()  # on a fresh connection: a broken one would fail every beat
        connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-job-{job.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)  # a beat stuck on a locked database need not hold up the job's end


def worker_launch_config():
    """How this worker trains (a training.ml.launch.LaunchConfig): in its own process,
    or under `accelerate launch`. A property of the machine (its GPUs), not of the job,
    so it is read when the job runs and recorded with what the job publishes."""
    from training.ml.launch import LaunchConfig  # torch and TRL: only where training runs

    config_file = settings.PREFLOOP_ACCELERATE_CONFIG
    if config_file and not os.path.isabs(config_file):
        config_file = os.path.join(settings.BASE_DIR, config_file)  # deploy/accelerate/... from any directory
    return LaunchConfig(settings.PREFLOOP_TRAIN_PROCESSES, config_file, machines=settings.PREFLOOP_TRAIN_MACHINES,
                        main_process_ip=settings.PREFLOOP_MAIN_PROCESS_IP,
                        main_process_port=settings.PREFLOOP_MAIN_PROCESS_PORT,
                        node_launcher=settings.PREFLOOP_NODE_LAUNCHER)


@contextmanager
def job_memory_freed():
    """Whatever a job loaded is garbage once it returns, but a trainer and its callbacks
    hold the models in reference cycles only the cycle collector frees, and CUDA's
    caching allocator keeps the freed blocks: a long-lived worker would carry each job's
    models into the next one. So: collect, and hand the cached blocks back."""
    try:
        yield
    finally:
        gc.collect()
        torch = sys.modules.get("torch")  # a worker that never imported torch has nothing to free
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_job_now(job: Job) -> Job:
    """Run a job in this process (a command's or an experiment's inline mode, chosen
    explicitly; never a fallback for a broker that is down) and announce it."""
    job_kind = JOB_TYPES[job.kind]
    if not job_kind.claim(job):
        job.refresh_from_db()
        if not job.is_finished:
            job.mark_failed("another job of this kind is running for this run; try again when it is done")
    else:
        with heartbeat(job), job_memory_freed():  # or the job sweep would take this process for dead
            try:
                job_kind.run(job)
            except BaseException as error:  # Ctrl-C or SIGTERM stopping this process mid-job
                try:
                    job.refresh_from_db()
                    if not job.is_finished:
                        job.mark_failed(f"stopped in the process running it inline ({type(error).__name__}: "
                                        f"{error})")
                    announce_finished(job)  # its round moves on (or fails) now, not after the sweep
                except Exception:  # the interrupt may have broken the connection: keep the first error
                    log.exception("could not record that job %s was stopped", job.pk)
                raise
    job.refresh_from_db()
    announce_finished(job)
    return job
