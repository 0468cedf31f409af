"""Win rates, Bradley–Terry scores and annotator agreement, checked against hand-worked values."""

from __future__ import annotations

import math

import pytest

from labeling.agreement import Agreement, agreement, agreement_with_others
from training.ml.rating import Z95, Strength, fit_bradley_terry, wilson_interval, win_rate


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _by_player(strengths: list[Strength]) -> dict[str, Strength]:
    return {s.player: s for s in strengths}


def test_wilson_interval_eight_of_ten():
    # p = 0.8, z² = 3.84146, z²/n = 0.384146, denominator 1.384146
    # centre = (0.8 + 0.192073) / 1.384146 = 0.716740
    # half = 1.959964 / 1.384146 · √(0.8·0.2/10 + 3.84146/400) = 1.416004 · √0.0256037 = 0.226578
    # → (0.490162, 0.943318)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-5)
    assert high == pytest.approx(0.9433, abs=5e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 5)
    assert low == 0.0
    assert 0 < high < 1
    low, high = wilson_interval(5, 5)
    assert high == 1.0
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_win_rate_counts_ties_half():
    # 3 wins + 2 ties / 2 = 4 successes of 10 games
    result = win_rate(3, 2, 5)
    assert result.n == 10
    assert result.rate == pytest.approx(0.4)
    assert (result.low, result.high) == wilson_interval(4, 10)


def test_win_rate_without_games():
    result = win_rate(0, 0, 0)
    assert result.rate is None
    assert (result.low, result.high) == (0.0, 1.0)


def test_bradley_terry_two_players_matches_closed_form():
    # Score equation for A: 4·σ(θ) = 3 wins → σ(θ) = 3/4 → θ = ln 3 = 1.098612.
    # Information: n·p·(1−p) = 4 · 0.75 · 0.25 = 0.75 → se = 1/√0.75 = 1.154701.
    games = [("A", "B", 1.0)] * 3 + [("B", "A", 1.0)]
    strengths = fit_bradley_terry(games, anchor="B", prior_variance=None)
    assert [s.player for s in strengths] == ["A", "B"]
    a, b = strengths
    se = 1 / math.sqrt(0.75)
    assert a.score == pytest.approx(math.log(3), abs=1e-6)
    assert se == pytest.approx(1.1547, abs=1e-4)
    assert a.low == pytest.approx(math.log(3) - Z95 * se, abs=1e-4)
    assert a.high == pytest.approx(math.log(3) + Z95 * se, abs=1e-4)
    assert a.games == 4
    assert b == Strength("B", 0.0, 0.0, 0.0, 4)


def test_bradley_terry_tie_counts_half_each():
    # 1 win + 1 tie of 2 games → 1.5 effective wins: 2·σ(θ) = 1.5 → θ = ln 3 again.
    # The tie is written with B first to check it is symmetric.
    games = [("A", "B", 1.0), ("B", "A", 0.5)]
    a = _by_player(fit_bradley_terry(games, anchor="B", prior_variance=None))["A"]
    assert a.score == pytest.approx(math.log(3), abs=1e-6)


def test_bradley_terry_three_players_solves_score_equations():
    games = (
        [("A", "B", 1.0)] * 3
        + [("A", "B", 0.0)]
        + [("B", "C", 1.0)] * 2
        + [("C", "B", 1.0)]
        + [("A", "C", 1.0)] * 2
        + [("C", "A", 1.0), ("A", "C", 0.5)]
    )
    strengths = fit_bradley_terry(games, anchor="B", prior_variance=None)
    assert [s.player for s in strengths] == ["A", "B", "C"]
    by_player = _by_player(strengths)
    assert by_player["B"].score == 0.0
    assert (by_player["B"].low, by_player["B"].high) == (0.0, 0.0)

    # At the MLE each player's expected credit equals their observed credit.
    theta = {name: s.score for name, s in by_player.items()}
    observed = dict.fromkeys(theta, 0.0)
    expected = dict.fromkeys(theta, 0.0)
    for first, second, outcome in games:
        p = _sigmoid(theta[first] - theta[second])
        observed[first] += outcome
        observed[second] += 1 - outcome
        expected[first] += p
        expected[second] += 1 - p
    for name in theta:
        assert expected[name] == pytest.approx(observed[name], abs=1e-8)
    for s in strengths:
        assert s.low <= s.score <= s.high


def test_prior_keeps_an_unbeaten_player_finite():
    games = [("A", "B", 1.0)] * 2
    a = _by_player(fit_bradley_terry(games, anchor="B", prior_variance=10.0))["A"]
    assert math.isfinite(a.score) and a.score > 0
    # MAP stationarity: 2·σ(−θ) (the likelihood's pull up) = θ / 10 (the prior's pull down).
    assert 2 * _sigmoid(-a.score) == pytest.approx(a.score / 10, abs=1e-8)
    with pytest.raises(ValueError, match="prior"):
        fit_bradley_terry(games, anchor="B", prior_variance=None)


def test_bradley_terry_rejects_bad_games():
    assert fit_bradley_terry([], anchor="base") == [Strength("base", 0.0, 0.0, 0.0, 0.0)]
    with pytest.raises(ValueError):
        fit_bradley_terry([("A", "B", 1.5)], anchor="B")
    with pytest.raises(ValueError):
        fit_bradley_terry([("A", "A", 1.0)], anchor="A")


def test_agreement_hand_example():
    # Counted items (≥ 2 judgements): 3; ["tie"] is skipped.
    # pairs: C(2,2) + C(2,2) + C(3,2) = 1 + 1 + 3 = 5; agreeing: 1 + 0 + 3 = 4 → P_o = 4/5
    # categories over counted items: a = 3, b = 4 of 7 → P_e = (9 + 16)/49 = 25/49
    # kappa = (4/5 − 25/49) / (24/49) = (71/245) · (49/24) = 71/120
    result = agreement([["a", "a"], ["a", "b"], ["b", "b", "b"], ["tie"]])
    assert (result.items, result.pairs, result.agreeing) == (3, 5, 4)
    assert result.rate == pytest.approx(0.8)
    assert result.kappa == pytest.approx(71 / 120)


def test_agreement_single_category_has_no_kappa():
    # P_e = 1: every pair agrees by construction, so chance correction is undefined.
    result = agreement([["a", "a"], ["a", "a", "a"]])
    assert result == Agreement(items=2, pairs=4, agreeing=4, rate=1.0, kappa=None)


def test_agreement_without_pairs():
    assert agreement([["a"], []]) == Agreement(0, 0, 0, None, None)


def test_agreement_with_others_hand_example():
    # ("a" vs a, b) → 1 of 2; ("b" vs b, b) → 2 of 2; ("tie" vs a) → 0 of 1; ("a" vs none) → 0 of 0
    items = [("a", ["a", "b"]), ("b", ["b", "b"]), ("tie", ["a"]), ("a", [])]
    assert agreement_with_others(items) == (3, 5)
