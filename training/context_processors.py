from __future__ import annotations

from training.models import Run


def loop_state(request) -> dict:
    """Every signed-in page says which runs are stopped and offers the stop button."""
    if not request.user.is_authenticated:
        return {}
    paused = list(Run.objects.filter(paused=True).select_related("paused_by"))
    return {"paused_runs": paused, "loop_stopped": bool(paused) and not Run.objects.filter(paused=False).exists()}
