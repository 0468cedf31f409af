from __future__ import annotations

import random

import pytest
from django.core.management import CommandError, call_command

from labeling.models import Label
from labeling.oracles import concrete_number, judge, keyword, oracle_named, shorter_no_apology


def test_oracles_score_what_their_names_say():
    assert shorter_no_apology("Paris.") > shorter_no_apology("The capital of France is Paris.")
    assert shorter_no_apology("Sorry, Paris.") < shorter_no_apology("The capital of France is Paris, of course.")
    assert concrete_number("It has 3 sides.") > concrete_number("It has three sides.")
    assert keyword("banana")("Banana and banana") == 2
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle_named("telepathy")


def test_judge_prefers_the_better_side_and_answers_at_random_at_the_noise_rate():
    rng = random.Random(0)
    score = shorter_no_apology
    clean = [judge(score, ["short", "much much longer"], 0.0, rng).choice for _ in range(50)]
    assert set(clean) == {"a"}
    noisy = [judge(score, ["short", "much much longer"], 0.5, rng).choice for _ in range(4000)]
    assert 0.2 < noisy.count("b") / len(noisy) < 0.3  # half the time random, half of that wrong
    assert judge(score, ["same", "same"], 0.0, rng).choice == "tie"
    ranked = judge(score, ["medium one", "x", "the longest one of all"], 0.0, rng)
    assert (ranked.choice, ranked.ranking) == ("ranking", [1, 0, 2])


@pytest.mark.django_db
def test_simulate_labels_command_marks_labels_as_simulated(make_comparison, people):
    comparisons = [make_comparison(texts=("It is 42.", "I'm sorry, I can't say.")) for _ in range(3)]
    make_comparison(texts=("x", "y"))
    call_command("simulate_labels", "--oracle", "shorter_no_apology", "--noise", "0", "--n", "3")
    labels = Label.objects.filter(comparison__in=comparisons)
    assert labels.count() == 3 and all(label.origin == Label.Origin.SIMULATED for label in labels)
    for label in labels:
        left = label.comparison.ordered_completions()[0].text
        assert label.choice == ("a" if left == "It is 42." else "b")
    oracle = labels[0].annotator
    assert oracle.username == "oracle-shorter_no_apology" and not oracle.is_active
    assert not oracle.has_usable_password()
    with pytest.raises(CommandError, match="unknown oracle"):
        call_command("simulate_labels", "--oracle", "nope")
