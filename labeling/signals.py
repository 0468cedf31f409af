"""What the labeling app tells the rest of PrefLoop, without importing it."""

from __future__ import annotations

from django.dispatch import Signal

label_submitted = Signal()

# Sent before an undo deletes a label (kwarg `label`). A receiver that knows the label
# is in use returns a reason ("a published reward model was trained on it"); any reason
# refuses the undo. Labeling asks; it does not know who answers.
label_undo_requested = Signal()
"""Sent with `run_id=` after a new label is committed (the training app listens: a
label may start reward-model training or a round)."""
