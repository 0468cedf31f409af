"""What the labeling app tells the rest of PrefLoop, without importing it."""

from __future__ import annotations

from django.dispatch import Signal

label_submitted = Signal()
"""Sent with `run_id=` after a new label is committed (the training app listens: a
label may start reward-model training or a round)."""
