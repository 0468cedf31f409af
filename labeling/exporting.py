"""Labels out. The preference export is TRL's conversational preference format, one row
per (chosen, rejected) pair, which `datasets.load_dataset("json", ...)` loads and
`trl.RewardTrainer` trains on unchanged. The raw export keeps every label, with who gave
it and how long it took, for analyses TRL does not do."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO

from django.db.models import Prefetch, QuerySet

from labeling.models import Comparison, ComparisonItem, Label, LabeledBy


def labels_for_export() -> QuerySet[Label]:
    items = ComparisonItem.objects.select_related("completion__policy_version").order_by("position")
    return (
        Label.objects.select_related("annotator", "comparison__prompt")
        .prefetch_related(Prefetch("comparison__items", queryset=items))
        .order_by("id")
    )


def preference_labels() -> QuerySet[Label]:
    """The labels the preference export turns into pairs: people's and the simulator's on
    the runs people label, not those on bake-off comparisons (answers to a run's held-out
    evaluation prompts: a model trained on them is no longer judged on unseen prompts),
    nor an experiment arm's (a gold judge's simulated labels, kept apart from people's).
    The raw export keeps every label and says where it came from."""
    return (labels_for_export().exclude(comparison__source=Comparison.Source.BAKEOFF)
            .exclude(comparison__run__labeled_by=LabeledBy.SIMULATOR))


def export_rows(raw: bool, chunk_size: int = 100) -> Iterator[dict]:
    """Every label (raw) or the preference pairs, streamed from the database."""
    if raw:
        return raw_rows(labels_for_export().iterator(chunk_size))
    return preference_rows(preference_labels().iterator(chunk_size))


def ordered_completions_of(label: Label):
    # Uses the prefetched items; Comparison.ordered_completions() would query again.
    return [item.completion for item in label.comparison.items.all()]


def preference_rows(labels: Iterable[Label]) -> Iterator[dict]:
    for label in labels:
        prompt = label.comparison.prompt.messages
        for chosen, rejected in label.preference_pairs(ordered_completions_of(label)):
            yield {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen.text}],
                "rejected": [{"role": "assistant", "content": rejected.text}],
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
                 "external_source": c.external_source or None, "text": c.text}
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
            "run": label.comparison.run_id,
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
