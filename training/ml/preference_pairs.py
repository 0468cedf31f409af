"""Preference pairs: one person's (chosen, rejected) judgement of two answers to a prompt,
as every learner here reads labels (reward models, DPO, SFT on chosen answers), and the
helpers that concern pairs alone: the stable held-out split, and the two answers of
each pair as the (prompt, completion, ended, token ids) samples a reward model scores.

No Django: the web app turns labels into `PreferencePair`s (training/services/), a test
or a command line builds them by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PreferencePair:
    """One (chosen, rejected) judgement for a prompt."""

    group: int
    """The comparison it came from: a K-way ranking gives several pairs of one group."""
    prompt: list[dict]
    chosen: str
    rejected: str
    strength: int | None = None
    chosen_ended: bool = True
    """False when the completion was cut at the length limit (no EOS), as PPO will see it."""
    rejected_ended: bool = True
    chosen_ids: tuple[int, ...] | None = None
    """The answer's tokens as the policy generated them; None for text to tokenize."""
    rejected_ids: tuple[int, ...] | None = None
    imported: bool = False
    """From an imported dataset rather than a person's label here: held-out accuracy is
    reported for the two apart, since they need not agree."""


def is_heldout(group: int, fraction: float) -> bool:
    """Stable across runs and versions: a comparison held out once is always held out,
    so accuracy is never measured on pairs an earlier version trained on."""
    digest = hashlib.sha256(f"prefloop-heldout:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_heldout(pairs: Sequence[PreferencePair], fraction: float) -> tuple[list, list]:
    """(train, held-out) pairs; all pairs of one comparison fall on the same side."""
    train, heldout = [], []
    for pair in pairs:
        (heldout if is_heldout(pair.group, fraction) else train).append(pair)
    return train, heldout


def chosen_texts(pairs: Sequence[PreferencePair]) -> list[tuple]:
    """The chosen answers as scored samples: (prompt, completion, ended, token ids)."""
    return [(p.prompt, p.chosen, p.chosen_ended, p.chosen_ids) for p in pairs]


def rejected_texts(pairs: Sequence[PreferencePair]) -> list[tuple]:
    """The rejected answers as scored samples: (prompt, completion, ended, token ids)."""
    return [(p.prompt, p.rejected, p.rejected_ended, p.rejected_ids) for p in pairs]
