"""Simulated annotators: label the queue with a scripted oracle, so the loop runs
unattended in tests and experiments. Their labels have the origin "simulated" and their
accounts cannot sign in."""

from __future__ import annotations

import random
import re

from django.contrib.auth import get_user_model

from labeling.models import Label
from labeling.oracles import judge, oracle_named
from labeling.services import LabelInput, next_comparison_for, submit_label


def oracle_annotator(name: str):
    username = "oracle-" + re.sub(r"[^\w.@+-]", "-", name)[:140]
    user, created = get_user_model().objects.get_or_create(username=username, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def simulate_labels(oracle: str, noise: float, count: int, seed: int = 0) -> int:
    """Label up to `count` comparisons from the queue; returns how many were labeled."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError("noise must be between 0 and 1")
    score = oracle_named(oracle)
    annotator = oracle_annotator(oracle)
    rng = random.Random(seed)
    labeled = 0
    while labeled < count and (comparison := next_comparison_for(annotator)) is not None:
        judgement = judge(score, [c.text for c in comparison.ordered_completions()], noise, rng)
        submit_label(annotator, LabelInput(comparison.pk, judgement.choice, judgement.ranking),
                     origin=Label.Origin.SIMULATED)
        labeled += 1
    return labeled
