"""What the loop did, read from the database for the progress pages: the timeline,
reward-model accuracy, PPO curves, win rates of policy versions (from people, on
cross-version comparisons, and from the latest reward model, on the evaluation prompts),
a Bradley–Terry ranking, and the evaluation answers side by side.

Human numbers count people only: simulated labels (`is_simulated`) are left out. The
maths lives in `training.ml.rating` and `labeling.agreement`; this module gathers rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

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
from training.ml.rating import Strength, WinRate, fit_bradley_terry, win_rate
from training.models import EvaluationPrompt, EvaluationSample, PolicyVersion, RewardModelVersion, RewardScore, Round

# TRL sums KL and entropy over the response tokens and averages over the batch.
PPO_CURVES = {
    "ppo/reward": "Reward-model score (normalized)",
    "ppo/kl": "KL to the reference (nats per response)",
    "ppo/entropy": "Entropy (nats per response)",
}
# Outcome for the first version of a judged pair: ties and "both bad" say neither is
# better, so each side gets half (the Chatbot Arena convention).
OUTCOME_OF_CHOICE = {Label.Choice.A: 1.0, Label.Choice.B: 0.0, Label.Choice.TIE: 0.5, Label.Choice.BOTH_BAD: 0.5}

Game = tuple[int, int, float]
"""(version number, other version number, outcome for the first: 1 won, 0.5 tie, 0 lost)"""


def version_games() -> list[Game]:
    """Every human judgement between two different policy versions, on cross-version
    comparisons. A K-way ranking gives one game per pair of versions in it."""
    versions_at: dict[int, dict[int, int]] = defaultdict(dict)
    items = ComparisonItem.objects.filter(comparison__source=Comparison.Source.CROSS_VERSION).values_list(
        "comparison_id", "position", "completion__policy_version__number"
    )
    for comparison_id, position, number in items:
        versions_at[comparison_id][position] = number
    games: list[Game] = []
    labels = human_labels().filter(comparison__source=Comparison.Source.CROSS_VERSION)
    for comparison_id, choice, ranking in labels.values_list("comparison_id", "choice", "ranking"):
        at = versions_at[comparison_id]
        if choice == Label.Choice.RANKING:
            judged = [(at[better], at[worse], 1.0) for better, worse in combinations(ranking, 2)]
        else:
            judged = [(at[0], at[1], OUTCOME_OF_CHOICE[choice])]
        games.extend(game for game in judged if game[0] != game[1])
    return games


def head_to_head(games: list[Game], version: int, other: int) -> WinRate:
    """`version`'s win rate against `other` (ties count half), with a 95% interval."""
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


def bradley_terry_ranking(games: list[Game]) -> list[Strength]:
    """Versions ranked by strength (log-odds of beating the base, v0 = 0) with 95%
    intervals; the fit uses every comparison at once, so versions never compared
    directly are still placed through the ones in between."""
    return fit_bradley_terry([(f"v{a}", f"v{b}", outcome) for a, b, outcome in games], anchor="v0")


@dataclass(frozen=True)
class RewardModelView:
    """Scores of the evaluation answers by one reward model: {version: {prompt id: score}}."""

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


def latest_reward_model_view() -> RewardModelView:
    """The newest reward model that has scored evaluation answers, and its scores."""
    latest = RewardScore.objects.order_by("-reward_model__number").values_list("reward_model__number", flat=True)
    number = latest.first()
    scores: dict[int, dict[int, float]] = defaultdict(dict)
    if number is not None:
        # Only evaluation answers are ever scored (services.evaluation), so a reward
        # model's scores are exactly its judgement of the evaluation set.
        rows = RewardScore.objects.filter(reward_model__number=number).values_list(
            "completion__policy_version__number", "completion__prompt_id", "score"
        )
        for version, prompt_id, score in rows:
            scores[version][prompt_id] = score
    return RewardModelView(number, dict(scores))


def win_rate_rows(versions: list[PolicyVersion], games: list[Game], judge: RewardModelView) -> list[dict]:
    """For each version after the base: its win rates against the base and against its
    parent, from people and from the reward model."""
    rows = []
    for version in versions:
        if version.number == 0:
            continue
        previous = version.parent.number if version.parent_id else version.number - 1
        rows.append({
            "version": version.number, "previous": previous,
            "human_vs_base": head_to_head(games, version.number, 0),
            "human_vs_previous": head_to_head(games, version.number, previous),
            "rm_vs_base": judge.head_to_head(version.number, 0),
            "rm_vs_previous": judge.head_to_head(version.number, previous),
            "rm_mean_score": judge.mean_score(version.number),
        })
    return rows


def ppo_curves(rounds) -> list[dict]:
    """Per round with a published policy: the PPO metrics by step."""
    curves = []
    for round_ in rounds:
        if round_.policy_after is None:
            continue
        history = round_.policy_after.metrics.get("history", [])
        curve = {"round": round_.number, "policy": round_.policy_after.number}
        for key in PPO_CURVES:
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            curve[key] = {"x": [x for x, _ in points], "y": [y for _, y in points]}
        curves.append(curve)
    return curves


def timeline() -> list[dict]:
    """Rounds, reward models and policies, newest first."""
    events = []
    for round_ in Round.objects.all():
        how = f"{round_.get_kind_display().lower()}, {round_.trigger}"
        events.append({"at": round_.created_at, "kind": "round", "number": round_.number,
                       "text": f"Round {round_.number} started ({how})"})
        if round_.finished_at:
            events.append({"at": round_.finished_at, "kind": "round", "number": round_.number,
                           "text": f"Round {round_.number} {round_.status}"
                                   + (f": {round_.error}" if round_.error else "")})
    for rm in RewardModelVersion.objects.all():
        accuracy = f"held-out accuracy {rm.heldout_accuracy:.3f}" if rm.heldout_accuracy is not None else "no held-out"
        events.append({"at": rm.created_at, "kind": "reward_model", "number": rm.number,
                       "text": f"Reward model v{rm.number} published: {rm.label_count} labels, {accuracy}"})
    for policy in PolicyVersion.objects.select_related("parent"):
        origin = f" (from v{policy.parent.number})" if policy.parent else ""
        text = "Base policy v0 registered" if policy.number == 0 else f"Policy v{policy.number} published{origin}"
        events.append({"at": policy.created_at, "kind": "policy", "number": policy.number, "text": text})
    return sorted(events, key=lambda event: event["at"], reverse=True)


def evaluation_grid(versions: list[PolicyVersion], judge: RewardModelView) -> list[dict]:
    """The evaluation prompts, each with every given version's answer (rendered safely)
    and its reward-model score, in the order of `versions`."""
    numbers = [v.number for v in versions]
    answers: dict[tuple[int, int], EvaluationSample] = {
        (s.prompt_id, s.policy_version.number): s
        for s in EvaluationSample.objects.filter(policy_version__number__in=numbers)
        .select_related("completion", "policy_version")
    }
    rows = []
    for entry in EvaluationPrompt.objects.select_related("prompt"):
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


def dashboard() -> dict:
    """Everything /progress/ shows, with its charts."""
    versions = list(PolicyVersion.objects.select_related("parent"))
    reward_models = list(RewardModelVersion.objects.all())
    rounds = list(Round.objects.select_related("policy_before", "policy_after", "reward_model"))
    games = version_games()
    judge = latest_reward_model_view()
    rows = win_rate_rows(versions, games, judge)
    ranking = bradley_terry_ranking(games) if games else []
    overlapped = judgements_by_comparison(human_labels())
    annotators = annotator_table(overlapped)
    curves = ppo_curves(reversed(rounds))
    days, per_day = labels_per_day()
    chart_specs = {
        "labels-per-day": prefloop_charts.labels_per_day(days, per_day, "Labels per day (people only)"),
        "labels-per-annotator": charts.labels_per_annotator(annotators),
        "reward-model-accuracy": charts.reward_model_accuracy(reward_models),
        **ppo_charts(curves),
        "win-rates": charts.win_rates(rows),
        "bradley-terry": charts.bradley_terry(ranking),
    }
    return {
        "timeline": timeline(), "win_rates": rows, "ranking": ranking, "games": len(games), "judge": judge,
        "agreement": overlap_agreement(overlapped), "annotators": annotators, "charts": chart_specs,
        "has_curves": bool(curves),
    }


def round_page(round_: Round) -> dict:
    """A round: its jobs, inputs, PPO config and curves, and the evaluation answers
    before and after it."""
    curves = ppo_curves([round_])
    judge = latest_reward_model_view()
    shown = [round_.policy_before] + ([round_.policy_after] if round_.policy_after else [])
    if shown[0].number != 0:
        shown.insert(0, PolicyVersion.objects.get(number=0))
    return {
        "round": round_, "jobs": round_.jobs.select_related("requested_by", "round").order_by("created_at"),
        "config": round_.policy_after.config if round_.policy_after else {},
        "policy_metrics": summary_metrics(round_.policy_after) if round_.policy_after else {},
        "shown_versions": shown, "evaluation": evaluation_grid(shown, judge), "judge": judge,
        "charts": ppo_charts(curves),
    }


def version_page(version: PolicyVersion) -> dict:
    """A policy version: config, metrics, win rates, and its evaluation answers next to
    the base's and its parent's."""
    judge = latest_reward_model_view()
    rows = win_rate_rows([version], version_games(), judge)
    neighbours = [*PolicyVersion.objects.filter(number=0), *([version.parent] if version.parent_id else []), version]
    versions = list({v.number: v for v in neighbours}.values())  # base, parent, this; each once
    produced_by = version.rounds_produced.first()
    curves = ppo_curves([produced_by]) if produced_by else []
    return {
        "version": version, "produced_by": produced_by, "win_rates": rows[0] if rows else None, "judge": judge,
        "policy_metrics": summary_metrics(version), "shown_versions": versions,
        "evaluation": evaluation_grid(versions, judge),
        "charts": ppo_charts(curves),
    }


def ppo_charts(curves: list[dict]) -> dict:
    """chart id → figure for the PPO curves, none when there is no curve."""
    if not curves:
        return {}
    return {f"ppo-{key.split('/')[1]}": charts.ppo_curve(curves, key, title) for key, title in PPO_CURVES.items()}


def summary_metrics(version: PolicyVersion) -> dict:
    """The last logged value of each PPO metric, with the run's time and episodes."""
    last: dict = {}
    for entry in version.metrics.get("history", []):
        last.update({key: value for key, value in entry.items() if key.startswith("ppo/")})
    return {"seconds": version.metrics.get("seconds"), "episodes": version.metrics.get("episodes"), **last}
