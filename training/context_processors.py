from __future__ import annotations

from training.models import LoopState


def loop_state(request) -> dict:
    """Every signed-in page shows whether the loop is stopped and offers the stop button."""
    if not request.user.is_authenticated:
        return {}
    return {"loop": LoopState.current()}
