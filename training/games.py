"""Games read from people's labels, and what they rank: every human judgement between
two different policy versions (or outside systems whose answers were imported into a
run) is a game; from those, head-to-head win rates and a Bradley–Terry ranking of a
run's players (Arena-style) or of a bake-off's candidates. A run's reward model judges
the same versions on the run's evaluation prompts (`RewardJudge`).

Games count people only: labels whose origin is not "human" are left out. The maths
lives in `training.ml.rating`; this module gathers rows. What each page shows from
these is assembled in `training.pages`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import TypeVar

from django.db.models import QuerySet

from labeling.models import Comparison, ComparisonItem, Label
from labeling.statistics import human_labels
from training.ml.rating import Strength, WinRate, fit_bradley_terry, win_rate
from training.models import BakeOff, PolicyVersion, RewardModelVersion, RewardScore, Run
from training.services.evaluation import lineage_versions

# Outcome for the first version of a judged pair: ties and "both bad" say neither is
# better, so each side gets half (the Chatbot Arena convention).
OUTCOME_OF_CHOICE = {Label.Choice.A: 1.0, Label.Choice.B: 0.0, Label.Choice.TIE: 0.5, Label.Choice.BOTH_BAD: 0.5}

Game = tuple[int, int, float]
"""(version number, other version number, outcome for the first: 1 won, 0.5 tie, 0 lost)"""

PlayerGame = tuple[str, str, float]
"""(player, other player, outcome for the first), a player being a policy version (`v3`)
or an outside system (its name; the import refuses names like `v3`)."""

Player = TypeVar("Player", int, str)

# Comparisons between different versions: rounds' cross-version ones and bake-offs'.
VERSUS_SOURCES = (Comparison.Source.CROSS_VERSION, Comparison.Source.BAKEOFF)
# Comparisons between different players: those, and the imported ones (outside systems
# against each other or against a version). The other sources compare one version's
# own samples and rank nothing.
RANKED_SOURCES = (*VERSUS_SOURCES, Comparison.Source.IMPORTED)


def version_games(runs: Iterable[Run] | None = None) -> list[Game]:
    """Every human judgement between two different policy versions, on cross-version
    and bake-off comparisons (of the given runs, or all). A K-way ranking gives one game
    per pair of versions in it. Completions from outside systems are not versions and
    are skipped."""
    versions_at: dict[int, dict[int, int | None]] = defaultdict(dict)
    items = ComparisonItem.objects.filter(comparison__source__in=VERSUS_SOURCES)
    labels = human_labels().filter(comparison__source__in=VERSUS_SOURCES)
    if runs is not None:
        items = items.filter(comparison__run__in=list(runs))
        labels = labels.filter(comparison__run__in=list(runs))
    for comparison_id, position, number in items.values_list("comparison_id", "position",
                                                             "completion__policy_version__number"):
        versions_at[comparison_id][position] = number
    return judged_games(versions_at, labels)


def judged_games(players_at: Mapping[int, Mapping[int, Player | None]],
                 labels: QuerySet[Label]) -> list[tuple[Player, Player, float]]:
    """The games people's `labels` state between the players at each comparison's
    positions (`players_at[comparison][position]`; None for no player): one per label,
    one per pair of a K-way ranking; a player never plays itself."""
    games = []
    for comparison_id, choice, ranking in labels.values_list("comparison_id", "choice", "ranking"):
        at = players_at[comparison_id]
        if choice == Label.Choice.RANKING:
            judged = [(at.get(better), at.get(worse), 1.0) for better, worse in combinations(ranking, 2)]
        else:
            judged = [(at.get(0), at.get(1), OUTCOME_OF_CHOICE[choice])]
        games.extend(g for g in judged if g[0] is not None and g[1] is not None and g[0] != g[1])
    return games


def player_games(run: Run) -> tuple[list[PlayerGame], set[str]]:
    """People's judgements on the run's comparisons between two different players (its
    lineage's versions and outside systems), and the names of the systems among them."""
    lineage = {v.number for v in lineage_versions(run)}
    players_at: dict[int, dict[int, str | None]] = defaultdict(dict)
    systems: set[str] = set()
    items = ComparisonItem.objects.filter(comparison__run=run, comparison__source__in=RANKED_SOURCES)
    for comparison_id, position, number, system in items.values_list(
            "comparison_id", "position", "completion__policy_version__number", "completion__external_source"):
        if number is None:
            systems.add(system)
        players_at[comparison_id][position] = system if number is None else (
            f"v{number}" if number in lineage else None)
    labels = human_labels().filter(comparison__run=run, comparison__source__in=RANKED_SOURCES)
    games = judged_games(players_at, labels)
    return games, systems & {name for game in games for name in game[:2]}


def bakeoff_games(bakeoff: BakeOff) -> list[PlayerGame]:
    """People's judgements on the bake-off's comparisons, between players named `vN`."""
    players_at: dict[int, dict[int, str | None]] = defaultdict(dict)
    comparisons = bakeoff.comparisons.all()
    for comparison_id, position, number in ComparisonItem.objects.filter(comparison__in=comparisons).values_list(
            "comparison_id", "position", "completion__policy_version__number"):
        players_at[comparison_id][position] = None if number is None else f"v{number}"
    return judged_games(players_at, human_labels().filter(comparison__in=comparisons))


@dataclass(frozen=True)
class Ranking:
    """One Bradley–Terry fit of a run's players, all on the scale of one anchor."""

    run: Run
    games: int
    """Judgements the fit used (those between players linked to the anchor)."""
    anchor: str
    """The player fixed at 0: the run's base, else a system or the oldest version."""
    systems: set[str]
    """The outside systems among the ranked players."""
    unlinked: list[str]
    """Players no chain of judgements links to the anchor, by name: left out of the fit."""
    strengths: list[Strength]


def run_ranking(run: Run) -> Ranking | None:
    """One Bradley–Terry fit over the run's versions and the outside systems its people
    judged them against, anchored on the run's base (or, when the base never played, the
    first system by name, else the oldest version); None before any such judgement."""
    games, systems = player_games(run)
    if not games:
        return None
    players = {name for game in games for name in game[:2]}
    base = f"v{run.base_version.number}" if run.base_version_id else None
    if base in players:
        anchor = base
    else:  # a branch's games may not reach its base
        anchor = min(systems) if systems else min(players, key=lambda player: int(player.lstrip("v")))
    # Only players a chain of judgements links to the anchor have a place on its scale;
    # a group judged only among itself would be placed by the prior alone.
    linked = linked_players(games, anchor)
    linked_games = [game for game in games if game[0] in linked]
    return Ranking(run=run, games=len(linked_games), anchor=anchor, systems=systems & linked,
                   unlinked=sorted(players - linked), strengths=fit_bradley_terry(linked_games, anchor=anchor))


def linked_players(games: list[PlayerGame], anchor: str) -> set[str]:
    """The anchor and every player connected to it by judged games, whoever won."""
    neighbours: dict[str, set[str]] = defaultdict(set)
    for first, second, _ in games:
        neighbours[first].add(second)
        neighbours[second].add(first)
    linked, frontier = {anchor}, [anchor]
    while frontier:
        for other in neighbours[frontier.pop()] - linked:
            linked.add(other)
            frontier.append(other)
    return linked


def head_to_head(games: list[Game] | list[PlayerGame], version: int | str | None, other: int | str | None) -> WinRate:
    """`version`'s win rate against `other` (ties count half), with a 95% interval;
    players named as the games name them (version numbers, or `v3` and system names)."""
    wins = ties = losses = 0
    for first, second, outcome in games:
        if (first, second) == (version, other):
            mine = outcome
        elif (first, second) == (other, version):
            mine = 1.0 - outcome
        else:
            continue
        wins, ties, losses = wins + (mine == 1.0), ties + (mine == 0.5), losses + (mine == 0.0)
    return win_rate(wins, ties, losses)


@dataclass(frozen=True)
class RewardJudge:
    """One reward model as a judge of a run's versions: its scores of their answers to
    the run's evaluation prompts."""

    number: int | None
    """The reward model's version number; None when no reward model has scored them."""
    scores: dict[int, dict[int, float]]
    """{policy version number: {prompt id: score}}"""

    def head_to_head(self, version: int | None, other: int | None) -> WinRate:
        """Share of evaluation prompts on which `version`'s answer scores higher."""
        mine, theirs = self.scores.get(version, {}), self.scores.get(other, {})
        shared = mine.keys() & theirs.keys()
        wins = sum(mine[p] > theirs[p] for p in shared)
        ties = sum(mine[p] == theirs[p] for p in shared)
        return win_rate(wins, ties, len(shared) - wins - ties)

    def mean_score(self, version: int) -> float | None:
        values = list(self.scores.get(version, {}).values())
        return statistics.fmean(values) if values else None


NO_JUDGE = RewardJudge(None, {})
"""The judge of a run no reward model has scored: every win rate is empty."""


def newest_judge(run: Run) -> RewardJudge:
    """The run's newest reward model (its own, or the one a branch inherited) that has
    scored the run's evaluation answers, and those scores."""
    own = set(RewardModelVersion.objects.filter(run=run).values_list("pk", flat=True))
    if run.inherited_reward_model_id:
        own.add(run.inherited_reward_model_id)
    versions = [v.pk for v in lineage_versions(run)]
    scored = RewardScore.objects.filter(reward_model__in=own, completion__policy_version__in=versions,
                                        completion__prompt__evaluations__run=run)
    number = scored.order_by("-reward_model__number").values_list("reward_model__number", flat=True).first()
    if number is None:
        return NO_JUDGE
    return RewardJudge(number, scores_by_version(scored.filter(reward_model__number=number)))


def fixed_judge(run: Run, reward_model: RewardModelVersion | None, versions: list[PolicyVersion]) -> RewardJudge:
    """One given reward model (a bake-off's) as the judge of the versions' answers to
    the run's evaluation prompts."""
    if reward_model is None:
        return NO_JUDGE
    scored = RewardScore.objects.filter(reward_model=reward_model, completion__policy_version__in=versions,
                                        completion__prompt__evaluations__run=run)
    return RewardJudge(reward_model.number, scores_by_version(scored))


def scores_by_version(scored: QuerySet[RewardScore]) -> dict[int, dict[int, float]]:
    """{policy version number: {prompt id: score}} of the given scores."""
    scores: dict[int, dict[int, float]] = defaultdict(dict)
    for version, prompt_id, score in scored.values_list(
            "completion__policy_version__number", "completion__prompt_id", "score"):
        scores[version][prompt_id] = score
    return dict(scores)
