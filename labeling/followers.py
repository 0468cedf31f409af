"""Who hears of labels. The labeling app knows nothing of what trains on its labels (the
training app builds on it), so its one follower is handed in once the apps are ready:
training/apps.py hands in training/services/loop.py, where every reaction to a label and
every reason to refuse an undo is listed. Until then nothing follows and nothing refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labeling.models import Label


@dataclass(frozen=True)
class LabelFollower:
    on_submitted: Callable[[int], None]
    """Called with the run's id once a new label is committed (its failure never loses the label)."""
    undo_refusal: Callable[[Label], str | None]
    """Why this label may no longer be undone (e.g. "reward model r3 was trained on it"), or None."""


NO_FOLLOWER = LabelFollower(on_submitted=lambda run_id: None, undo_refusal=lambda label: None)

_follower = NO_FOLLOWER


def follow_labels(follower: LabelFollower) -> None:
    """Make `follower` the one that hears of labels (TrainingConfig.ready)."""
    global _follower
    _follower = follower


def label_follower() -> LabelFollower:
    return _follower
