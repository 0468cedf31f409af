from __future__ import annotations

import os

from celery import Celery
from celery.signals import celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")

app = Celery("prefloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@celeryd_init.connect
def pin_devices(sender=None, conf=None, options=None, **kwargs) -> None:
    """A worker started with -Q takes the GPUs its queues are pinned to (settings), in
    the main process, before its pool forks."""
    from training.services.worker_devices import pin_worker_devices

    queues = (options or {}).get("queues") or []
    pin_worker_devices(queues.split(",") if isinstance(queues, str) else queues)
