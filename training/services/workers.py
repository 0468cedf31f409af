"""The Celery workers: which are alive and which queues they serve, for the progress
page (asked over the broker, a broadcast `active_queues`, never the result backend, and
cached briefly so a room full of open dashboards asks once every few seconds); and the
GPUs a worker may use, by the queues it serves."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, MutableMapping

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

CACHE_KEY = "prefloop:worker-status"
CACHE_SECONDS = 5


def worker_status(timeout: float = 1.0) -> dict:
    """{"workers": [{"name", "queues"}], "error": str}; an unreachable broker is an
    error to show, not an exception."""
    cached = cache.get(CACHE_KEY)
    if cached is not None:
        return cached
    from prefloop.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            replies = app.control.inspect(timeout=timeout, connection=connection).active_queues() or {}
        status = {
            "workers": [{"name": name, "queues": sorted(q["name"] for q in queues)}
                        for name, queues in sorted(replies.items())],
            "error": "",
        }
    except Exception as error:  # kombu raises several kinds for a broker that is down
        log.warning("could not ask the workers: %s", error)
        status = {"workers": [], "error": f"The broker did not answer ({type(error).__name__}: {error})."}
    cache.set(CACHE_KEY, status, CACHE_SECONDS)
    return status


def pin_worker_devices(queues: Iterable[str], environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Give a starting worker the GPUs its queues are pinned to (PREFLOOP_<QUEUE>_QUEUE_DEVICES)
    as CUDA_VISIBLE_DEVICES, before anything in it touches CUDA; its jobs then see them
    as cuda:0, cuda:1, ... Returns the devices, or None when its queues pin none. A
    worker serving queues pinned to different GPUs is refused: it cannot honour both."""
    pinned = {settings.PREFLOOP_QUEUE_DEVICES[q] for q in queues if settings.PREFLOOP_QUEUE_DEVICES.get(q)}
    if not pinned:
        return None
    if len(pinned) > 1:
        raise ImproperlyConfigured(f"a worker for queues {', '.join(sorted(queues))} would be pinned to different "
                                   f"devices ({' and '.join(sorted(pinned))}): start one worker per queue")
    devices = pinned.pop()
    environ["CUDA_VISIBLE_DEVICES"] = "" if devices == "cpu" else devices
    log.info("worker for %s pinned to %s (CUDA_VISIBLE_DEVICES)", ", ".join(sorted(queues)), devices)
    return devices
