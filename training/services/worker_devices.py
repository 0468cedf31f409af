"""The GPUs a starting worker may use, by the queues it serves (prefloop/celery.py calls
this as the worker starts; the settings are PREFLOOP_<QUEUE>_QUEUE_DEVICES)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, MutableMapping

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)


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
