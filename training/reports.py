"""What the loop did, read from the database for the progress pages: per run (or several
runs side by side) the timeline, reward-model accuracy, each method's own curves, win
rates of policy versions (from people, on cross-version comparisons, and from the run's
reward model, on its evaluation prompts), a Bradley–Terry ranking of the run's versions
and of the outside systems whose answers were imported into it (Arena-style), and the
evaluation answers side by side; and a bake-off's candidates, ranked by people.

Human numbers count people only: labels whose origin is not "human" are left out. The
maths lives in `training.ml.rating` and `labeling.agreement`; this module gathers rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from django.db.models import Q

from labeling.models import Comparison, ComparisonItem, Label
from labeling.rendering import render_untrusted_markdown
from labeling.statistics import (
    annotator_table,
    human_labels,
    judgements_by_comparison,
    labels_per_day,
    overlap_agreement,
)
from prefloop import charts as prefloop_charts
from training import charts
from training.ml.methods import METHODS
from training.ml.rating import WinRate, fit_bradley_terry, win_rate
from training.models import (
    BakeOff,
    EvaluationSample,
    PolicyVersion,
    RewardModelVersion,
    RewardScore,
    Round,
    Run,
)
from training.services.evaluation import lineage_versions

# Outcome for the first version of a judged pair: ties and "both bad" say neither is
# better, so each side gets half (the Chatbot Arena convention).
OUTCOME_OF_CHOICE = {Label.Choice.A: 1.0, Label.Choice.B: 0.0, Label.Choice.TIE: 0.5, Label.Choice.BOTH_BAD: 0.5}

Game = tuple[int, int, float]
"""(version number, other version number, outcome for the first: 1 won, 0.5 tie, 0 lost)"""

PlayerGame = tuple[str, str, float]
"""(player, other player, outcome for the first), a player being a policy version (`v3`)
or an outside system (its name; the import refuses names like `v3`)."""

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


def judged_games(players_at: dict[int, dict], labels) -> list[tuple]:
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


def run_ranking(run: Run) -> dict | None:
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
    return {"run": run, "games": len(linked_games), "anchor": anchor, "systems": systems & linked,
            "unlinked": sorted(players - linked), "strengths": fit_bradley_terry(linked_games, anchor=anchor)}


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


def head_to_head(games: list[Game] | list[PlayerGame], version: int | str, other: int | str) -> WinRate:
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
class RewardModelView:
    """Scores of a run's evaluation answers by one reward model: {version: {prompt: score}}."""

    number: int | None
    scores: dict[int, dict[int, float]]

    def head_to_head(self, version: int, other: int) -> WinRate:
        """Share of evaluation prompts on which `version`'s answer scores higher."""
        mine, theirs = self.scores.get(version, {}), self.scores.get(other, {})
        shared = mine.keys() & theirs.keys()
        wins = sum(mine[p] > theirs[p] for p in shared)
        ties = sum(mine[p] == theirs[p] for p in shared)
        return win_rate(wins, ties, len(shared) - wins - ties)

    def mean_score(self, version: int) -> float | None:
        values = list(self.scores.get(version, {}).values())
        return statistics.fmean(values) if values else None


def reward_model_view(run: Run) -> RewardModelView:
    """The run's newest reward model (its own, or the one a branch inherited) that has
    scored the run's evaluation answers, and those scores."""
    own = set(RewardModelVersion.objects.filter(run=run).values_list("pk", flat=True))
    if run.inherited_reward_model_id:
        own.add(run.inherited_reward_model_id)
    versions = [v.pk for v in lineage_versions(run)]
    scored = RewardScore.objects.filter(reward_model__in=own, completion__policy_version__in=versions,
                                        completion__prompt__evaluations__run=run)
    number = scored.order_by("-reward_model__number").values_list("reward_model__number", flat=True).first()
    scores: dict[int, dict[int, float]] = defaultdict(dict)
    if number is not None:
        rows = scored.filter(reward_model__number=number).values_list(
            "completion__policy_version__number", "completion__prompt_id", "score")
        for version, prompt_id, score in rows:
            scores[version][prompt_id] = score
    return RewardModelView(number, dict(scores))


def win_rate_rows(versions: list[PolicyVersion], games: list[Game], judges: dict[int, RewardModelView]) -> list[dict]:
    """For each trained version: its win rates against its run's base and against its
    parent, from people and from its run's reward model."""
    rows = []
    for version in versions:
        if version.is_base:
            continue
        base = version.run.base_version_id and version.run.base_version.number
        previous = version.parent.number if version.parent_id else base
        judge = judges.get(version.run_id, RewardModelView(None, {}))
        rows.append({
            "version": version.number, "label": f"v{version.number}", "run": version.run, "method": version.method,
            "base": base, "previous": previous,
            "human_vs_base": head_to_head(games, version.number, base),
            "human_vs_previous": head_to_head(games, version.number, previous),
            "rm_vs_base": judge.head_to_head(version.number, base),
            "rm_vs_previous": judge.head_to_head(version.number, previous),
            "rm_mean_score": judge.mean_score(version.number), "judge": judge.number,
        })
    return rows


def method_curves(versions: Iterable[PolicyVersion]) -> dict[str, dict]:
    """chart id → figure, one chart per curve its method declares, one trace per
    version: each method draws its own metrics (PPO's reward and KL, DPO's loss and
    margins...), never another method's keys."""
    by_chart: dict[str, dict] = {}
    for version in versions:
        method = METHODS.get(version.method)
        history = version.metrics.get("history", []) if isinstance(version.metrics, dict) else []
        if method is None or not history:
            continue
        for curve in method.curves:
            points = [(entry["step"], entry[curve.key]) for entry in history if curve.key in entry]
            chart = by_chart.setdefault(curve.key.replace("/", "-"), {"key": curve.key, "title":
                                        f"{method.title}: {curve.title}", "curves": []})
            chart["curves"].append({"name": f"{version.run.name} v{version.number}",
                                    curve.key: {"x": [x for x, _ in points], "y": [y for _, y in points]}})
    return {chart_id: charts.method_curve(chart["curves"], chart["key"], chart["title"], "training step")
            for chart_id, chart in by_chart.items()}


def timeline(runs: list[Run]) -> list[dict]:
    """Rounds, reward models and policies of the runs, newest first."""
    events = []
    for round_ in Round.objects.filter(run__in=runs).select_related("run"):
        how = f"{round_.recipe_title}, {round_.trigger}"
        events.append({"at": round_.created_at, "kind": "round", "number": round_.number,
                       "text": f"Round {round_.number} of {round_.run.name} started ({how})"})
        if round_.finished_at:
            events.append({"at": round_.finished_at, "kind": "round", "number": round_.number,
                           "text": f"Round {round_.number} {round_.status}"
                                   + (f": {round_.error}" if round_.error else "")})
    for rm in RewardModelVersion.objects.filter(run__in=runs):
        accuracy = f"held-out accuracy {rm.heldout_accuracy:.3f}" if rm.heldout_accuracy is not None else "no held-out"
        how = " (head refit)" if rm.update == RewardModelVersion.Update.REFIT else ""
        events.append({"at": rm.created_at, "kind": "reward_model", "number": rm.number,
                       "text": f"Reward model v{rm.number}{how} published: {rm.label_count} labels, {accuracy}"})
    for policy in PolicyVersion.objects.filter(run__in=runs).select_related("parent", "run"):
        if policy.is_base:
            text = f"Base policy v{policy.number} registered for {policy.run.name}"
        else:
            method = METHODS[policy.method].title if policy.method in METHODS else policy.method
            origin = f" from v{policy.parent.number}" if policy.parent else ""
            text = f"Policy v{policy.number} published ({method}{origin})"
        events.append({"at": policy.created_at, "kind": "policy", "number": policy.number, "text": text})
    return sorted(events, key=lambda event: event["at"], reverse=True)


def evaluation_grid(run: Run, versions: list[PolicyVersion], judge: RewardModelView) -> list[dict]:
    """The run's evaluation prompts, each with every given version's answer (rendered
    safely) and its reward-model score, in the order of `versions`."""
    numbers = [v.number for v in versions]
    answers: dict[tuple[int, int], EvaluationSample] = {
        (s.prompt_id, s.policy_version.number): s
        for s in EvaluationSample.objects.filter(policy_version__number__in=numbers)
        .select_related("completion", "policy_version")
    }
    rows = []
    for entry in run.evaluation_prompts.select_related("prompt"):
        cells = []
        for number in numbers:
            sample = answers.get((entry.prompt_id, number))
            cells.append(None if sample is None else {
                "html": render_untrusted_markdown(sample.completion.text), "ended": sample.completion.ended,
                "score": judge.scores.get(number, {}).get(entry.prompt_id),
            })
        if any(cells):
            rows.append({"prompt_html": render_untrusted_markdown(entry.prompt.text), "cells": cells})
    return rows


def dashboard(runs: list[Run]) -> dict:
    """Everything /progress/ shows for one run or several side by side, with charts."""
    versions = [v for run in runs for v in lineage_versions(run) if v.run_id == run.pk or v.is_base]
    versions = list({v.pk: v for v in versions}.values())
    for version in versions:  # lineage_versions does not join the run
        version.run = next((r for r in runs if r.pk == version.run_id), version.run)
    reward_models = list(RewardModelVersion.objects.filter(run__in=runs).select_related("run"))
    games = version_games(runs)
    judges = {run.pk: reward_model_view(run) for run in runs}
    rows = win_rate_rows(sorted(versions, key=lambda v: v.number), games, judges)
    rankings = [ranking for ranking in map(run_ranking, runs) if ranking is not None]
    overlapped = judgements_by_comparison(human_labels())
    annotators = annotator_table(overlapped)
    curves = method_curves(sorted(versions, key=lambda v: v.number))
    days, per_day = labels_per_day()
    chart_specs = {
        "labels-per-day": prefloop_charts.labels_per_day(days, per_day, "Labels per day (people only)"),
        "labels-per-annotator": charts.labels_per_annotator(annotators),
        "reward-model-accuracy": charts.reward_model_accuracy(reward_models),
        **curves,
        "win-rates": charts.win_rates(rows),
        "bradley-terry": charts.bradley_terry(rankings),
    }
    return {
        "runs": runs, "timeline": timeline(runs), "win_rates": rows, "rankings": rankings, "judges": judges,
        "agreement": overlap_agreement(overlapped), "annotators": annotators, "charts": chart_specs,
        "curve_charts": list(curves), "compare": len(runs) > 1,
    }


def round_page(round_: Round) -> dict:
    """A round: its jobs, inputs, the method's config and curves, and the evaluation
    answers before and after it."""
    run = round_.run
    judge = reward_model_view(run)
    shown = [round_.policy_before] + ([round_.policy_after] if round_.policy_after else [])
    if not shown[0].is_base:
        shown.insert(0, run.base_version)
    produced = round_.policy_after
    curves = method_curves([produced]) if produced else {}
    return {
        "round": round_, "jobs": round_.jobs.select_related("requested_by", "round", "run").order_by("created_at"),
        "method": METHODS.get(produced.method) if produced else None,
        "config": produced.config if produced else {},
        "policy_metrics": summary_metrics(produced) if produced else {},
        "shown_versions": shown, "evaluation": evaluation_grid(run, shown, judge), "judge": judge,
        "charts": curves, "curve_charts": list(curves),
    }


def version_page(version: PolicyVersion) -> dict:
    """A policy version: its run and parent, method, config, metrics, win rates, and its
    evaluation answers next to its run's base's and its parent's."""
    run = version.run
    judge = reward_model_view(run)
    rows = win_rate_rows([version], version_games([run]), {run.pk: judge})
    neighbours = [run.base_version, *([version.parent] if version.parent_id else []), version]
    versions = list({v.number: v for v in neighbours if v is not None}.values())  # base, parent, this; each once
    produced_by = version.rounds_produced.first()
    bakeoffs = BakeOff.objects.filter(Q(start=version) | Q(candidates__version=version)).distinct()
    curves = method_curves([version])
    return {
        "version": version, "run": run, "produced_by": produced_by, "win_rates": rows[0] if rows else None,
        "judge": judge, "method": METHODS.get(version.method), "config": version.config,
        "policy_metrics": summary_metrics(version), "shown_versions": versions,
        "evaluation": evaluation_grid(run, versions, judge), "charts": curves, "curve_charts": list(curves),
        "children": list(version.children.select_related("run")), "bakeoffs": list(bakeoffs),
    }


def summary_metrics(version: PolicyVersion) -> dict:
    """The last logged value of each of the version's metrics, with its training time
    and how many examples it trained on."""
    metrics = version.metrics if isinstance(version.metrics, dict) else {}
    last: dict = {}
    for entry in metrics.get("history", []):
        last.update({key: value for key, value in entry.items() if key != "step" and isinstance(value, int | float)})
    examples = metrics.get("examples", metrics.get("episodes"))
    return {"seconds": metrics.get("seconds"), "examples": examples, **metrics.get("summary", {}), **last}


def bakeoff_games(bakeoff: BakeOff) -> list[PlayerGame]:
    """People's judgements on the bake-off's comparisons, between players named `vN`."""
    players_at: dict[int, dict[int, str | None]] = defaultdict(dict)
    comparisons = bakeoff.comparisons.all()
    for comparison_id, position, number in ComparisonItem.objects.filter(comparison__in=comparisons).values_list(
            "comparison_id", "position", "completion__policy_version__number"):
        players_at[comparison_id][position] = None if number is None else f"v{number}"
    return judged_games(players_at, human_labels().filter(comparison__in=comparisons))


def reward_model_scores(run: Run, reward_model: RewardModelVersion | None,
                        versions: list[PolicyVersion]) -> RewardModelView:
    """One reward model's scores of the versions' answers to the run's evaluation prompts."""
    scores: dict[int, dict[int, float]] = defaultdict(dict)
    if reward_model is not None:
        rows = RewardScore.objects.filter(reward_model=reward_model, completion__policy_version__in=versions,
                                          completion__prompt__evaluations__run=run).values_list(
            "completion__policy_version__number", "completion__prompt_id", "score")
        for version, prompt_id, score in rows:
            scores[version][prompt_id] = score
    return RewardModelView(reward_model.number if reward_model else None, dict(scores))


def last_logged_kl(version: PolicyVersion) -> float | None:
    """The KL to the reference its method logged last (`ppo/kl`, `grpo/kl`, ...); None
    for methods that do not measure it (DPO, SFT, best-of-N)."""
    key = f"{version.method}/kl"
    history = version.metrics.get("history", []) if isinstance(version.metrics, dict) else []
    return next((entry[key] for entry in reversed(history) if isinstance(entry.get(key), int | float)), None)


def kl_of(version: PolicyVersion) -> dict | None:
    """The version's KL to the base as its evaluation measured it (every method alike),
    else the last one its method logged while training; None when neither exists."""
    if version.is_base:
        return {"value": 0.0, "stderr": None, "measured": True}
    if version.kl_to_base is not None:
        return {"value": version.kl_to_base, "stderr": version.kl_to_base_stderr, "measured": True}
    logged = last_logged_kl(version)
    return None if logged is None else {"value": logged, "stderr": None, "measured": False}


def bakeoff_page(bakeoff: BakeOff) -> dict:
    """A bake-off: its candidates ranked by people's Bradley–Terry scores (anchored on
    the start), each one's win rate against the start, mean reward-model score, KL to
    the reference, compute time, and the evaluation answers side by side."""
    run, start = bakeoff.run, bakeoff.start
    candidates = list(bakeoff.candidates.select_related("job", "version"))
    versions = [c.version for c in candidates if c.version_id]
    games = bakeoff_games(bakeoff)
    anchor = f"v{start.number}"
    strengths = {s.player: s for s in fit_bradley_terry(games, anchor=anchor)} if games else {}
    judge = reward_model_scores(run, bakeoff.reward_model, [start, *versions])
    rows = []
    for candidate in candidates:
        version = candidate.version
        player = f"v{version.number}" if version else None
        rows.append({
            "candidate": candidate, "version": version, "strength": strengths.get(player),
            "vs_start": head_to_head(games, player, anchor) if version else None,
            "rm_mean_score": judge.mean_score(version.number) if version else None,
            "kl": kl_of(version) if version else None, "seconds": candidate.compute_seconds,
            "is_head": version is not None and version.pk == run.head_id,
        })
    rows.sort(key=lambda row: (row["strength"] is None, -(row["strength"].score if row["strength"] else 0.0)))
    ranking = {"run": run, "strengths": list(strengths.values()), "systems": set()}
    return {
        "bakeoff": bakeoff, "run": run, "rows": rows, "games": len(games), "start_strength": strengths.get(anchor),
        "start_rm_mean_score": judge.mean_score(start.number), "start_kl": kl_of(start), "judge": judge,
        "shown_versions": [start, *versions], "evaluation": evaluation_grid(run, [start, *versions], judge),
        "charts": {"bakeoff-strengths": charts.bradley_terry(
            [ranking] if games else [],
            f"Bradley–Terry strength vs the start, v{start.number} (log-odds, 95% interval)")},
        "comparisons": bakeoff.comparisons.count(),
        "labeled": bakeoff.comparisons.filter(label_count__gt=0).count(),
    }
