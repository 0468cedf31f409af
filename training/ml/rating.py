"""Win rates and Bradley–Terry strengths for ranking policy versions.

Annotators compare completions from two policy versions on the same prompt. A single pair of
versions gives a win rate with a Wilson interval; several versions compared in any pattern (not
every pair need meet) give Bradley–Terry scores on one log-odds scale, anchored at a reference
version so "is round 5 better than round 3?" has an answer with an interval around it.

Plain `math` only: the web process imports this for progress pages, and player counts are small
(a few dozen versions at most), so a hand-written Newton–Raphson with a Cholesky solve is enough.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
"""Two-sided 95% standard normal quantile."""

_MAX_ITERATIONS = 100
_TOLERANCE = 1e-10
_MAX_HALVINGS = 60


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n`.

    `successes` may be fractional (ties count half). Wilson rather than the normal
    approximation because it stays inside [0, 1] and behaves at 0 or n successes, which small
    labelled samples hit often. With no observations every rate is possible: (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class WinRate:
    """One version's record against another, with its win rate and 95% interval."""

    wins: int
    ties: int
    losses: int
    rate: float | None
    """(wins + ties/2) / n; None when no games were played."""
    low: float
    high: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(wins: int, ties: int, losses: int) -> WinRate:
    """Win rate where a tie counts half a win (the Chatbot Arena convention), with a Wilson 95%
    interval on (wins + ties/2) successes out of n games."""
    if min(wins, ties, losses) < 0:
        raise ValueError(f"counts must be non-negative, got {wins}/{ties}/{losses}")
    n = wins + ties + losses
    successes = wins + ties / 2
    low, high = wilson_interval(successes, n)
    return WinRate(wins, ties, losses, successes / n if n else None, low, high)


@dataclass(frozen=True)
class Strength:
    """A player's Bradley–Terry score on the anchor's scale."""

    player: str
    score: float
    """Log-odds of beating the anchor (anchor = 0)."""
    low: float
    """Lower end of the 95% interval (the anchor's is 0)."""
    high: float
    """Upper end of the 95% interval (the anchor's is 0)."""
    games: float
    """Games this player took part in."""


def fit_bradley_terry(
    games: Sequence[tuple[str, str, float]],
    anchor: str,
    prior_variance: float | None = 10.0,
    z: float = Z95,
) -> list[Strength]:
    """Bradley–Terry scores from `(first, second, outcome)` games, best first.

    `outcome` is 1.0 when first won, 0.0 when second won, 0.5 for a tie; a tie is half a win to
    each side, so the log-likelihood is Σ outcome·log σ(θ₁−θ₂) + (1−outcome)·log σ(θ₂−θ₁). The
    anchor is fixed at 0 (scores are only defined up to a shift) and the rest are fitted by
    Newton–Raphson. With `prior_variance` each non-anchor score gets an N(0, prior_variance)
    prior (MAP): a version that won every game then stays finite instead of running off to
    infinity. Intervals are score ± z·se with se from the inverse observed information.
    """
    if prior_variance is not None and not prior_variance > 0:
        raise ValueError(f"prior_variance must be positive or None, got {prior_variance}")
    for first, second, outcome in games:
        if first == second:
            raise ValueError(f"{first!r} cannot play itself")
        if not 0.0 <= outcome <= 1.0:
            raise ValueError(f"outcome must be in [0, 1], got {outcome} for {first!r} vs {second!r}")
    if not games:
        return [Strength(anchor, 0.0, 0.0, 0.0, 0.0)]

    players = sorted({anchor} | {name for first, second, _ in games for name in (first, second)})
    free = [name for name in players if name != anchor]
    index = {name: i for i, name in enumerate(free)}  # anchor is absent: its score is pinned at 0
    precision = 0.0 if prior_variance is None else 1.0 / prior_variance
    if prior_variance is None:
        _require_finite_mle(games, players, anchor)

    # The log-likelihood is linear in the outcomes of a pair's games, so each pair is summed
    # once, as (index or None for the anchor, index or None, first's wins, games): the loops
    # below then cost the number of pairs that met, not the number of labels.
    totals: dict[tuple[str, str], list[float]] = {}
    for first, second, outcome in games:
        key, won = ((first, second), outcome) if first < second else ((second, first), 1.0 - outcome)
        entry = totals.setdefault(key, [0.0, 0.0])
        entry[0] += won
        entry[1] += 1
    coded = [(index.get(first), index.get(second), won, n) for (first, second), (won, n) in totals.items()]

    def objective(theta: list[float]) -> float:
        total = -0.5 * precision * sum(t * t for t in theta)
        for i, j, won, n in coded:
            d = _score(theta, i) - _score(theta, j)
            total += won * _log_sigmoid(d) + (n - won) * _log_sigmoid(-d)
        return total

    theta = [0.0] * len(free)
    current = objective(theta)
    converged = False
    for _ in range(_MAX_ITERATIONS):
        gradient, information = _gradient_and_information(theta, coded, precision)
        step = _solve(information, gradient)
        # Judged on the full Newton step: a step shrunk by halving says nothing about
        # being at the optimum.
        if max((abs(s) for s in step), default=0.0) < _TOLERANCE:
            converged = True
            break
        # Newton can overshoot far from the optimum; halve until the objective does not
        # drop (beyond rounding, which near the optimum is all that is left).
        slack = 1e-12 * (1.0 + abs(current))
        for _ in range(_MAX_HALVINGS):
            candidate = [t + s for t, s in zip(theta, step, strict=True)]
            value = objective(candidate)
            if value >= current - slack:
                break
            step = [s / 2 for s in step]
        theta, current = candidate, value
        if not all(math.isfinite(t) for t in theta) or not math.isfinite(current):
            break
    if not converged:
        raise ValueError(
            "Bradley–Terry fit did not converge (scores running off to infinity, typically a player who "
            "won or lost every game); pass prior_variance to regularise"
        )

    _, information = _gradient_and_information(theta, coded, precision)
    variances = _inverse_diagonal(information)
    games_played = {name: 0.0 for name in players}
    for first, second, _ in games:
        games_played[first] += 1
        games_played[second] += 1

    strengths = [Strength(anchor, 0.0, 0.0, 0.0, games_played[anchor])]
    for name, score, variance in zip(free, theta, variances, strict=True):
        half_width = z * math.sqrt(variance)
        strengths.append(Strength(name, score, score - half_width, score + half_width, games_played[name]))
    strengths.sort(key=lambda s: (-s.score, s.player))
    return strengths


def _require_finite_mle(games: Sequence[tuple[str, str, float]], players: list[str], anchor: str) -> None:
    """Without a prior the MLE is finite and unique exactly when every player can be reached from
    the anchor and reach it along "took credit from" edges (Ford, 1957): otherwise some group won
    (or lost) every game against everyone else, and its scores diverge or are undetermined."""
    beat: dict[str, set[str]] = {name: set() for name in players}
    beaten_by: dict[str, set[str]] = {name: set() for name in players}
    for first, second, outcome in games:
        if outcome > 0:
            beat[first].add(second)
            beaten_by[second].add(first)
        if outcome < 1:
            beat[second].add(first)
            beaten_by[first].add(second)
    # Strongly connected: every player reachable from the anchor both along and against the edges.
    out_of_reach = (set(players) - _reachable(anchor, beat)) | (set(players) - _reachable(anchor, beaten_by))
    if out_of_reach:
        raise ValueError(
            "without a prior the Bradley–Terry scores are infinite or undetermined: "
            f"{', '.join(sorted(out_of_reach))} won or lost every game against the rest, or never met them; "
            "pass prior_variance to regularise"
        )


def _reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    frontier = [start]
    while frontier:
        for neighbour in edges[frontier.pop()]:
            if neighbour not in seen:
                seen.add(neighbour)
                frontier.append(neighbour)
    return seen


def _score(theta: list[float], i: int | None) -> float:
    return 0.0 if i is None else theta[i]


def _sigmoid(x: float) -> float:
    # Split by sign so exp never overflows and 1 - σ is not lost to cancellation.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _log_sigmoid(x: float) -> float:
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def _gradient_and_information(
    theta: list[float], coded: list[tuple[int | None, int | None, float, float]], precision: float
) -> tuple[list[float], list[list[float]]]:
    """Gradient of the log-posterior and its negative Hessian (observed information) over the
    non-anchor scores."""
    size = len(theta)
    gradient = [-precision * t for t in theta]
    information = [[precision if r == c else 0.0 for c in range(size)] for r in range(size)]
    for i, j, won, n in coded:
        d = _score(theta, i) - _score(theta, j)
        p, q = _sigmoid(d), _sigmoid(-d)
        residual = won * q - (n - won) * p  # won - n·p, without cancellation near p = 1
        weight = n * p * q
        if i is not None:
            gradient[i] += residual
            information[i][i] += weight
        if j is not None:
            gradient[j] -= residual
            information[j][j] += weight
        if i is not None and j is not None:
            information[i][j] -= weight
            information[j][i] -= weight
    return gradient, information


def _cholesky(matrix: list[list[float]]) -> list[list[float]]:
    """Lower-triangular L with L·Lᵀ = matrix, for a symmetric positive-definite matrix."""
    size = len(matrix)
    lower = [[0.0] * size for _ in range(size)]
    for r in range(size):
        for c in range(r + 1):
            partial = matrix[r][c] - sum(lower[r][k] * lower[c][k] for k in range(c))
            if r == c:
                if not partial > 0 or not math.isfinite(partial):
                    raise ValueError(
                        "Bradley–Terry information matrix is not positive definite (scores diverging or "
                        "players not connected to the anchor); pass prior_variance to regularise"
                    )
                lower[r][r] = math.sqrt(partial)
            else:
                lower[r][c] = partial / lower[c][c]
    return lower


def _cholesky_solve(lower: list[list[float]], rhs: list[float]) -> list[float]:
    size = len(lower)
    forward = [0.0] * size
    for r in range(size):
        forward[r] = (rhs[r] - sum(lower[r][k] * forward[k] for k in range(r))) / lower[r][r]
    solution = [0.0] * size
    for r in reversed(range(size)):
        solution[r] = (forward[r] - sum(lower[k][r] * solution[k] for k in range(r + 1, size))) / lower[r][r]
    return solution


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return _cholesky_solve(_cholesky(matrix), rhs)


def _inverse_diagonal(matrix: list[list[float]]) -> list[float]:
    """Diagonal of matrix⁻¹ (the variances), one unit-vector solve per column."""
    lower = _cholesky(matrix)
    size = len(matrix)
    diagonal = []
    for c in range(size):
        unit = [1.0 if r == c else 0.0 for r in range(size)]
        diagonal.append(_cholesky_solve(lower, unit)[c])
    return diagonal
