"""Which Celery workers are alive and which queues they serve, for the progress page.
Asked over the broker (a broadcast `active_queues`), never the result backend, and
cached briefly so a room full of open dashboards asks once every few seconds."""

from __future__ import annotations

import logging

from django.core.cache import cache

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
