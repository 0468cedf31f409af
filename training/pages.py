"""What each progress page shows, read from the database: per run (or several runs side
by side) the timeline, reward-model accuracy, each method's own curves, win rates of
policy versions (from people and from the run's reward model), the runs' rankings and
the evaluation answers side by side; a round's, a version's and a bake-off's pages.

Each page is a frozen dataclass whose fields are the names its template reads
(`page_context` hands them to the template); the games and rankings behind them come
from `training.games`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from django.db.models import Q, QuerySet

from labeling.agreement import Agreement
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
from training.games import (
    NO_JUDGE,
    Game,
    Ranking,
    RewardJudge,
    bakeoff_games,
    fixed_judge,
    head_to_head,
    newest_judge,
    run_ranking,
    version_games,
)
from training.ml.methods import METHODS, Method
from training.ml.rating import Strength, WinRate, fit_bradley_terry
from training.models import (
    BakeOff,
    BakeOffCandidate,
    EvaluationSample,
    Job,
    PolicyVersion,
    RewardModelVersion,
    Round,
    Run,
)
from training.services.evaluation import lineage_versions


def page_context(page: Dashboard | RoundPage | VersionPage | BakeOffPage) -> dict[str, Any]:
    """The page's fields by name, as its template reads them. Shallow on purpose:
    `dataclasses.asdict` would copy the model rows and turn nested rows into dicts."""
    return {field.name: getattr(page, field.name) for field in fields(page)}


@dataclass(frozen=True)
class WinRateRow:
    """A trained version's win rates against its run's base and against its parent,
    from people and from its run's reward model."""

    version: int
    label: str
    """How the charts name the version (`v3`)."""
    run: Run
    method: str
    base: int | None
    previous: int | None
    """The parent's number (the base's for a version without a parent)."""
    human_vs_base: WinRate
    human_vs_previous: WinRate
    rm_vs_base: WinRate
    rm_vs_previous: WinRate
    rm_mean_score: float | None
    judge: int | None
    """The number of the reward model behind the `rm_` figures."""


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: Literal["round", "reward_model", "policy"]
    number: int
    """The round's, reward model's or policy version's number (the page links to it)."""
    text: str


@dataclass(frozen=True)
class EvaluationAnswer:
    """One version's answer to an evaluation prompt."""

    html: str
    """The answer rendered safely (it is model output)."""
    ended: bool
    """False when the answer was cut off at the token limit."""
    score: float | None
    """The judge's score of it; None when the judge has not scored it."""


@dataclass(frozen=True)
class EvaluationRow:
    """An evaluation prompt and each shown version's answer, in the shown order."""

    prompt_html: str
    cells: list[EvaluationAnswer | None]
    """None where that version has not answered yet."""


@dataclass(frozen=True)
class KlToBase:
    value: float
    """Nats per answer."""
    stderr: float | None
    measured: bool
    """True when an evaluation sampled it; False when it is what the method logged in training."""


@dataclass(frozen=True)
class Dashboard:
    """Everything /progress/ shows for one run or several side by side."""

    runs: list[Run]
    timeline: list[TimelineEvent]
    win_rates: list[WinRateRow]
    rankings: list[Ranking]
    judges: dict[int, RewardJudge]
    """Each run's judge, by run id."""
    agreement: Agreement
    annotators: list[dict]
    charts: dict[str, dict]
    """Chart id → Plotly figure."""
    curve_charts: list[str]
    """Ids of the methods' own curve charts among `charts`."""
    compare: bool
    """True when several runs are shown side by side."""


@dataclass(frozen=True)
class RoundPage:
    """A round: its jobs, inputs, the method's config and curves, and the evaluation
    answers before and after it."""

    round: Round
    jobs: QuerySet[Job]
    method: Method | None
    config: dict
    policy_metrics: dict
    shown_versions: list[PolicyVersion]
    evaluation: list[EvaluationRow]
    judge: RewardJudge
    charts: dict[str, dict]
    curve_charts: list[str]


@dataclass(frozen=True)
class VersionPage:
    """A policy version: its run and parent, method, config, metrics, win rates, and its
    evaluation answers next to its run's base's and its parent's."""

    version: PolicyVersion
    run: Run
    produced_by: Round | None
    win_rates: WinRateRow | None
    """None for a base version."""
    judge: RewardJudge
    method: Method | None
    config: dict
    policy_metrics: dict
    shown_versions: list[PolicyVersion]
    evaluation: list[EvaluationRow]
    charts: dict[str, dict]
    curve_charts: list[str]
    children: list[PolicyVersion]
    bakeoffs: list[BakeOff]


@dataclass(frozen=True)
class CandidateRow:
    """A bake-off candidate with its standing against the start."""

    candidate: BakeOffCandidate
    version: PolicyVersion | None
    """None until the candidate's policy update has published it."""
    strength: Strength | None
    vs_start: WinRate | None
    rm_mean_score: float | None
    kl: KlToBase | None
    seconds: float | None
    """Compute time of its policy update."""
    is_head: bool


@dataclass(frozen=True)
class BakeOffPage:
    """A bake-off: its candidates ranked by people, and the evaluation answers."""

    bakeoff: BakeOff
    run: Run
    rows: list[CandidateRow]
    """Strongest first; candidates no one has judged last."""
    games: int
    start_strength: Strength | None
    start_rm_mean_score: float | None
    start_kl: KlToBase | None
    judge: RewardJudge
    shown_versions: list[PolicyVersion]
    evaluation: list[EvaluationRow]
    charts: dict[str, dict]
    comparisons: int
    labeled: int
    """Comparisons with at least one label."""


def win_rate_rows(versions: list[PolicyVersion], games: list[Game], judges: dict[int, RewardJudge]) -> list[WinRateRow]:
    """For each trained version: its win rates against its run's base and against its
    parent, from people and from its run's reward model."""
    rows = []
    for version in versions:
        if version.is_base:
            continue
        base = version.run.base_version.number if version.run.base_version_id else None
        previous = version.parent.number if version.parent_id else base
        judge = judges.get(version.run_id, NO_JUDGE)
        rows.append(WinRateRow(
            version=version.number, label=f"v{version.number}", run=version.run, method=version.method,
            base=base, previous=previous,
            human_vs_base=head_to_head(games, version.number, base),
            human_vs_previous=head_to_head(games, version.number, previous),
            rm_vs_base=judge.head_to_head(version.number, base),
            rm_vs_previous=judge.head_to_head(version.number, previous),
            rm_mean_score=judge.mean_score(version.number), judge=judge.number,
        ))
    return rows


def method_curves(versions: list[PolicyVersion]) -> dict[str, dict]:
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


def timeline(runs: list[Run]) -> list[TimelineEvent]:
    """Rounds, reward models and policies of the runs, newest first."""
    events = []
    for round_ in Round.objects.filter(run__in=runs).select_related("run"):
        how = f"{round_.recipe_title}, {round_.trigger}"
        events.append(TimelineEvent(round_.created_at, "round", round_.number,
                                    f"Round {round_.number} of {round_.run.name} started ({how})"))
        if round_.finished_at:
            events.append(TimelineEvent(round_.finished_at, "round", round_.number,
                                        f"Round {round_.number} {round_.status}"
                                        + (f": {round_.error}" if round_.error else "")))
    for rm in RewardModelVersion.objects.filter(run__in=runs):
        accuracy = f"held-out accuracy {rm.heldout_accuracy:.3f}" if rm.heldout_accuracy is not None else "no held-out"
        how = " (head refit)" if rm.update == RewardModelVersion.Update.REFIT else ""
        events.append(TimelineEvent(rm.created_at, "reward_model", rm.number,
                                    f"Reward model v{rm.number}{how} published: {rm.label_count} labels, {accuracy}"))
    for policy in PolicyVersion.objects.filter(run__in=runs).select_related("parent", "run"):
        if policy.is_base:
            text = f"Base policy v{policy.number} registered for {policy.run.name}"
        else:
            method = METHODS[policy.method].title if policy.method in METHODS else policy.method
            origin = f" from v{policy.parent.number}" if policy.parent else ""
            text = f"Policy v{policy.number} published ({method}{origin})"
        events.append(TimelineEvent(policy.created_at, "policy", policy.number, text))
    return sorted(events, key=lambda event: event.at, reverse=True)


def evaluation_grid(run: Run, versions: list[PolicyVersion], judge: RewardJudge) -> list[EvaluationRow]:
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
        cells: list[EvaluationAnswer | None] = []
        for number in numbers:
            sample = answers.get((entry.prompt_id, number))
            cells.append(None if sample is None else EvaluationAnswer(
                html=render_untrusted_markdown(sample.completion.text), ended=sample.completion.ended,
                score=judge.scores.get(number, {}).get(entry.prompt_id),
            ))
        if any(cells):
            rows.append(EvaluationRow(render_untrusted_markdown(entry.prompt.text), cells))
    return rows


def dashboard(runs: list[Run]) -> Dashboard:
    """Everything /progress/ shows for one run or several side by side, with charts."""
    versions = [v for run in runs for v in lineage_versions(run) if v.run_id == run.pk or v.is_base]
    versions = sorted({v.pk: v for v in versions}.values(), key=lambda v: v.number)
    for version in versions:  # lineage_versions does not join the run
        version.run = next((r for r in runs if r.pk == version.run_id), version.run)
    reward_models = list(RewardModelVersion.objects.filter(run__in=runs).select_related("run"))
    judges = {run.pk: newest_judge(run) for run in runs}
    rows = win_rate_rows(versions, version_games(runs), judges)
    rankings = [ranking for ranking in map(run_ranking, runs) if ranking is not None]
    overlapped = judgements_by_comparison(human_labels())
    annotators = annotator_table(overlapped)
    curves = method_curves(versions)
    days, per_day = labels_per_day()
    chart_specs = {
        "labels-per-day": prefloop_charts.labels_per_day(days, per_day, "Labels per day (people only)"),
        "labels-per-annotator": charts.labels_per_annotator(annotators),
        "reward-model-accuracy": charts.reward_model_accuracy(reward_models),
        **curves,
        "win-rates": charts.win_rates(rows),
        "bradley-terry": charts.bradley_terry(rankings),
    }
    return Dashboard(
        runs=runs, timeline=timeline(runs), win_rates=rows, rankings=rankings, judges=judges,
        agreement=overlap_agreement(overlapped), annotators=annotators, charts=chart_specs,
        curve_charts=list(curves), compare=len(runs) > 1,
    )


def round_page(round_: Round) -> RoundPage:
    """A round: its jobs, inputs, the method's config and curves, and the evaluation
    answers before and after it."""
    run = round_.run
    judge = newest_judge(run)
    shown = [round_.policy_before] + ([round_.policy_after] if round_.policy_after else [])
    if not shown[0].is_base:
        shown.insert(0, run.base_version)
    produced = round_.policy_after
    curves = method_curves([produced]) if produced else {}
    return RoundPage(
        round=round_, jobs=round_.jobs.select_related("requested_by", "round", "run").order_by("created_at"),
        method=METHODS.get(produced.method) if produced else None,
        config=produced.config if produced else {},
        policy_metrics=summary_metrics(produced) if produced else {},
        shown_versions=shown, evaluation=evaluation_grid(run, shown, judge), judge=judge,
        charts=curves, curve_charts=list(curves),
    )


def version_page(version: PolicyVersion) -> VersionPage:
    """A policy version: its run and parent, method, config, metrics, win rates, and its
    evaluation answers next to its run's base's and its parent's."""
    run = version.run
    judge = newest_judge(run)
    rows = win_rate_rows([version], version_games([run]), {run.pk: judge})
    neighbours = [run.base_version, *([version.parent] if version.parent_id else []), version]
    versions = list({v.number: v for v in neighbours if v is not None}.values())  # base, parent, this; each once
    bakeoffs = BakeOff.objects.filter(Q(start=version) | Q(candidates__version=version)).distinct()
    curves = method_curves([version])
    return VersionPage(
        version=version, run=run, produced_by=version.rounds_produced.first(), win_rates=rows[0] if rows else None,
        judge=judge, method=METHODS.get(version.method), config=version.config,
        policy_metrics=summary_metrics(version), shown_versions=versions,
        evaluation=evaluation_grid(run, versions, judge), charts=curves, curve_charts=list(curves),
        children=list(version.children.select_related("run")), bakeoffs=list(bakeoffs),
    )


def summary_metrics(version: PolicyVersion) -> dict[str, Any]:
    """The last logged value of each of the version's metrics, with its training time
    and how many examples it trained on."""
    metrics = version.metrics if isinstance(version.metrics, dict) else {}
    last: dict[str, Any] = {}
    for entry in metrics.get("history", []):
        last.update({key: value for key, value in entry.items() if key != "step" and isinstance(value, int | float)})
    examples = metrics.get("examples", metrics.get("episodes"))
    return {"seconds": metrics.get("seconds"), "examples": examples, **metrics.get("summary", {}), **last}


def last_logged_kl(version: PolicyVersion) -> float | None:
    """The KL to the reference its method logged last (`ppo/kl`, `grpo/kl`, ...); None
    for methods that do not measure it (DPO, SFT, best-of-N)."""
    key = f"{version.method}/kl"
    history = version.metrics.get("history", []) if isinstance(version.metrics, dict) else []
    return next((entry[key] for entry in reversed(history) if isinstance(entry.get(key), int | float)), None)


def kl_of(version: PolicyVersion) -> KlToBase | None:
    """The version's KL to the base as its evaluation measured it (every method alike),
    else the last one its method logged while training; None when neither exists."""
    if version.is_base:
        return KlToBase(value=0.0, stderr=None, measured=True)
    if version.kl_to_base is not None:
        return KlToBase(value=version.kl_to_base, stderr=version.kl_to_base_stderr, measured=True)
    logged = last_logged_kl(version)
    return None if logged is None else KlToBase(value=logged, stderr=None, measured=False)


def bakeoff_page(bakeoff: BakeOff) -> BakeOffPage:
    """A bake-off: its candidates ranked by people's Bradley–Terry scores (anchored on
    the start), each one's win rate against the start, mean reward-model score, KL to
    the reference, compute time, and the evaluation answers side by side."""
    run, start = bakeoff.run, bakeoff.start
    candidates = list(bakeoff.candidates.select_related("job", "version"))
    versions = [c.version for c in candidates if c.version_id]
    games = bakeoff_games(bakeoff)
    anchor = f"v{start.number}"
    strengths = {s.player: s for s in fit_bradley_terry(games, anchor=anchor)} if games else {}
    judge = fixed_judge(run, bakeoff.reward_model, [start, *versions])
    rows = []
    for candidate in candidates:
        version = candidate.version
        player = f"v{version.number}" if version else None
        rows.append(CandidateRow(
            candidate=candidate, version=version, strength=strengths.get(player),
            vs_start=head_to_head(games, player, anchor) if version else None,
            rm_mean_score=judge.mean_score(version.number) if version else None,
            kl=kl_of(version) if version else None, seconds=candidate.compute_seconds,
            is_head=version is not None and version.pk == run.head_id,
        ))
    rows.sort(key=lambda row: (row.strength is None, -(row.strength.score if row.strength else 0.0)))
    ranking = Ranking(run=run, games=len(games), anchor=anchor, systems=set(), unlinked=[],
                      strengths=list(strengths.values()))
    return BakeOffPage(
        bakeoff=bakeoff, run=run, rows=rows, games=len(games), start_strength=strengths.get(anchor),
        start_rm_mean_score=judge.mean_score(start.number), start_kl=kl_of(start), judge=judge,
        shown_versions=[start, *versions], evaluation=evaluation_grid(run, [start, *versions], judge),
        charts={"bakeoff-strengths": charts.bradley_terry(
            [ranking] if games else [],
            f"Bradley–Terry strength vs the start, v{start.number} (log-odds, 95% interval)")},
        comparisons=bakeoff.comparisons.count(),
        labeled=bakeoff.comparisons.filter(label_count__gt=0).count(),
    )
