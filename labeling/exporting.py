"""Labels out. The preference export is TRL's conversational preference format, one row
per (chosen, rejected) pair, which `datasets.load_dataset("json", ...)` loads and
`trl.RewardTrainer` trains on unchanged. The raw export keeps every label, with who gave
it and how long it took, for analyses TRL does not do.

Every export is of one run (by id or name): a run's pairs are what its reward model and
its methods learn from, and two runs' labels mixed in one file train a model neither
run asked for. Every runs' labels together only when asked (`all`), and every row says
its run either way."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO

from django.db.models import Prefetch, QuerySet

from labeling.models import Comparison, ComparisonItem, Label, LabeledBy

ALL_RUNS = "all"
"""What names every run's labels at once (`?run=all`, `--all-runs`)."""

RUNS_NAMED_IN_A_REFUSAL = 20


class ExportRunError(ValueError):
    """The export cannot tell which run it is of; the message names the runs there are."""


def export_run(reference: str | None):
    """The run an export is of: `reference` is a run's id (digits) or name, or ALL_RUNS
    (None is returned: every run). Without one, the only run there is (an install with
    one run has nothing to mix up: its downloads and scripts work unchanged); with two or
    more, ExportRunError naming them, rather than a file that mixes them."""
    runs = Comparison.run.field.related_model.objects.order_by("pk")
    reference = (reference or "").strip()
    if reference == ALL_RUNS:
        return None
    if not reference:
        first_two = list(runs[:2])
        if len(first_two) <= 1:
            return first_two[0] if first_two else None
        raise ExportRunError(f"there are {runs.count()} runs: name one, by id or name ({runs_listed(runs)}), "
                             f"or ask for all of them with {ALL_RUNS!r}")
    found = (runs.filter(pk=int(reference)) if reference.isdigit() else runs.filter(name=reference)).first()
    if found is None:
        raise ExportRunError(f"no run {reference!r}; the runs are {runs_listed(runs)} (or {ALL_RUNS!r})")
    return found


def runs_listed(runs) -> str:
    shown = [f"{name} (id {pk})" for pk, name in runs.values_list("pk", "name")[:RUNS_NAMED_IN_A_REFUSAL]]
    more = runs.count() - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def labels_for_export(run=None) -> QuerySet[Label]:
    """Every label of `run`'s own comparisons (None: of every run). A branch's
    inherited labels are its parent run's, and come with the parent's export."""
    items = ComparisonItem.objects.select_related("completion__policy_version").order_by("position")
    labels = (
        Label.objects.select_related("annotator", "comparison__prompt", "comparison__run")
        .prefetch_related(Prefetch("comparison__items", queryset=items))
        .order_by("id")
    )
    return labels if run is None else labels.filter(comparison__run=run)


def preference_labels(run=None) -> QuerySet[Label]:
    """The labels the preference export turns into pairs: people's and the simulator's on
    the runs people label, not those on bake-off comparisons (answers to a run's held-out
    evaluation prompts: a model trained on them is no longer judged on unseen prompts),
    nor an experiment arm's (a gold judge's simulated labels, kept apart from people's).
    The raw export keeps every label and says where it came from."""
    return (labels_for_export(run).exclude(comparison__source=Comparison.Source.BAKEOFF)
            .exclude(comparison__run__labeled_by=LabeledBy.SIMULATOR))


def export_rows(raw: bool, run, chunk_size: int = 100) -> Iterator[dict]:
    """Every label (raw) or the preference pairs of `run` (None: of every run, as
    export_run gives it), streamed from the database."""
    if raw:
        return raw_rows(labels_for_export(run).iterator(chunk_size))
    return preference_rows(preference_labels(run).iterator(chunk_size))


def run_fields(label: Label) -> dict:
    return {"run": label.comparison.run.name, "run_id": label.comparison.run_id}


def ordered_completions_of(label: Label):
    # Uses the prefetched items; Comparison.ordered_completions() would query again.
    return [item.completion for item in label.comparison.items.all()]


def preference_rows(labels: Iterable[Label]) -> Iterator[dict]:
    for label in labels:
        prompt = label.comparison.prompt.messages
        for chosen, rejected in label.preference_pairs(ordered_completions_of(label)):
            # `*_ended` False: the answer was cut off at the token cap (TRL ignores the
            # extra columns; a reader may want to leave such pairs out).
            yield {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen.text}],
                "rejected": [{"role": "assistant", "content": rejected.text}],
                "chosen_ended": chosen.ended,
                "rejected_ended": rejected.ended,
                **run_fields(label),
            }


def raw_rows(labels: Iterable[Label]) -> Iterator[dict]:
    for label in labels:
        yield {
            "label_id": label.pk,
            "comparison_id": label.comparison_id,
            "prompt": label.comparison.prompt.messages,
            "completions": [
                {"completion_id": c.pk,
                 "policy_version": c.policy_version.number if c.policy_version_id else None,
                 "external_source": c.external_source or None, "text": c.text, "ended": c.ended}
                for c in ordered_completions_of(label)
            ],
            "annotator": label.annotator.get_username(),
            "choice": label.choice,
            "ranking": label.ranking,
            "strength": label.strength,
            "rationale": label.rationale,
            "active_seconds": label.active_seconds,
            "origin": label.origin,
            "source": label.comparison.source,
            **run_fields(label),
            "created_at": label.created_at.isoformat(),
        }


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(rows: Iterable[dict], out: IO[str]) -> int:
    count = 0
    for line in jsonl_lines(rows):
        out.write(line)
        count += 1
    return count
