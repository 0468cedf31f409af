"""Answers from outside systems in, all or nothing, as blind comparisons of a run.

A JSONL file holds prompts (as the prompt import reads them: `prompt` or `messages`)
with the answers of named systems, either all answers of a prompt on one line:

    {"prompt": "Name a fruit.", "answers": {"model-a": "Apple.", "model-b": "A pear."}}

or one answer per line (lines of the same prompt are gathered):

    {"prompt": "Name a fruit.", "system": "model-a", "answer": "Apple."}

The whole file is parsed and checked before a row is written; the first problem is
reported with its line number (labeling/importing.py's rules and helpers). Each prompt
then gets a comparison of every pair of its systems' answers, shuffled by
create_comparison, so nothing the annotator sees tells who wrote what.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import PurePath

from django.db import transaction

from labeling.importing import (
    HASHES_PER_QUERY,
    PromptFileError,
    category_from,
    decode_utf8,
    json_object,
    messages_from_record,
    refuse_nul,
)
from labeling.models import Comparison, ComparisonItem, Completion, Prompt, conversation_hash
from labeling.services import create_comparison

MAX_SYSTEM_NAME = 200  # Completion.external_source
MAX_SYSTEMS_PER_PROMPT = 16  # 120 comparisons per prompt at most
# "v3" names policy version 3 in rankings; a system may not pass for one.
VERSION_NAME = re.compile(r"v\d+", re.IGNORECASE)
# Rows per `__in` query, far below SQLite's and PostgreSQL's bound-parameter limits.
IDS_PER_QUERY = HASHES_PER_QUERY


class CompletionFileError(PromptFileError):
    """The file cannot be imported; the message names the line."""


@dataclass
class PromptAnswers:
    """One prompt of the file and the answers of each system to it, in file order."""

    line: int
    """The first line that holds the prompt."""
    messages: list[dict]
    category: str = ""
    answers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredAnswers:
    prompts_created: int
    prompts_present: int
    completions_created: int
    comparisons_created: int
    comparisons_present: int
    """Pairs this run already had as an imported comparison (a file imported again)."""
    completions_by_prompt: dict[int, list[int]]
    """prompt id → ids of the systems' completions of it, for pairing with a policy version."""


def parse_completion_file(filename: str, data: bytes, max_bytes: int, min_systems: int = 2) -> list[PromptAnswers]:
    """The file's prompts with their answers, each with at least `min_systems` systems
    (two to compare them with each other; one when a policy version answers too)."""
    try:
        return parsed_entries(filename, data, max_bytes, min_systems)
    except CompletionFileError:
        raise
    except PromptFileError as error:  # from the prompt import's helpers: one error type for callers
        raise CompletionFileError(str(error)) from None


def parsed_entries(filename: str, data: bytes, max_bytes: int, min_systems: int) -> list[PromptAnswers]:
    if len(data) > max_bytes:
        raise CompletionFileError(f"the file is {len(data)} bytes; the limit is {max_bytes} bytes")
    if PurePath(filename).suffix.lower() not in {".jsonl", ".json"}:
        raise CompletionFileError(f"{filename!r}: use a .jsonl file")
    by_hash: dict[str, PromptAnswers] = {}
    for number, record in json_records(decode_utf8(data)):
        messages = messages_from_record(record, number)
        entry = by_hash.setdefault(conversation_hash(messages),
                                   PromptAnswers(number, messages, category_from(record, number)))
        for system, answer in answers_of(record, number):
            if system in entry.answers:
                raise CompletionFileError(
                    f"line {number}: a second answer from {system!r} to the prompt of line {entry.line}")
            entry.answers[system] = answer
    if not by_hash:
        raise CompletionFileError("the file holds no prompts")
    for entry in by_hash.values():
        if len(entry.answers) < min_systems:
            named = ", ".join(repr(s) for s in entry.answers)
            raise CompletionFileError(
                f"line {entry.line}: {len(entry.answers)} system(s) answer this prompt ({named}); "
                f"a comparison needs at least {min_systems}")
        if len(entry.answers) > MAX_SYSTEMS_PER_PROMPT:
            raise CompletionFileError(
                f"line {entry.line}: {len(entry.answers)} systems answer this prompt; "
                f"the limit is {MAX_SYSTEMS_PER_PROMPT}")
    return list(by_hash.values())


def json_records(text: str) -> Iterator[tuple[int, dict]]:
    # Lines end at "\n" only, as in the prompt import (U+2028 may sit raw in a JSON string).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield number, json_object(line, number, CompletionFileError)


def answers_of(record: dict, line: int) -> list[tuple[str, str]]:
    """(system, answer) pairs of a line: its `answers` object, or its `system` and `answer`."""
    if "answers" in record:
        answers = record["answers"]
        if not isinstance(answers, dict) or not answers:
            raise CompletionFileError(f"line {line}: 'answers' must be an object of system name → answer text")
        pairs = list(answers.items())
    elif "system" in record or "answer" in record:
        pairs = [(record.get("system"), record.get("answer"))]
    else:
        raise CompletionFileError(f"line {line}: missing field 'answers' (or 'system' and 'answer')")
    return [(system_name(system, line), answer_text(answer, system, line)) for system, answer in pairs]


def system_name(value: object, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CompletionFileError(f"line {line}: a system name must be a non-empty string")
    name = value.strip()
    if len(name) > MAX_SYSTEM_NAME:
        raise CompletionFileError(f"line {line}: a system name is longer than {MAX_SYSTEM_NAME} characters")
    refuse_nul(name, line)
    if VERSION_NAME.fullmatch(name):
        raise CompletionFileError(f"line {line}: {name!r} names a policy version; call the system something else")
    return name


def answer_text(value: object, system: object, line: int) -> str:
    if not isinstance(value, str):
        raise CompletionFileError(f"line {line}: the answer of {system!r} must be a string")
    if not value.strip():
        raise CompletionFileError(f"line {line}: the answer of {system!r} is empty")
    refuse_nul(value, line)
    return value.strip()


def chunks(items: list, size: int = IDS_PER_QUERY) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@transaction.atomic
def store_external_completions(run, entries: list[PromptAnswers], source: str,
                               rng: random.Random | None = None) -> StoredAnswers:
    """Store the prompts (one per conversation, as the prompt import does), the systems'
    answers (an answer already stored word for word is reused) and, in `run` (a
    training.Run), a comparison of each pair of systems per prompt, except pairs the run
    already has from an earlier import."""
    rng = rng or random.Random()
    prompts, new_prompts = stored_prompts(entries, source)
    rows, new_completions = stored_answers(entries, prompts)

    prompt_ids = [p.pk for p in prompts.values()]
    items: dict[int, set[int]] = {}
    for chunk in chunks(prompt_ids):
        for comparison_id, completion_id in ComparisonItem.objects.filter(
                comparison__run=run, comparison__prompt_id__in=chunk,
                comparison__source=Comparison.Source.IMPORTED).values_list("comparison_id", "completion_id"):
            items.setdefault(comparison_id, set()).add(completion_id)
    present_pairs = {frozenset(ids) for ids in items.values() if len(ids) == 2}

    created = present = 0
    completions_by_prompt: dict[int, list[int]] = {}
    for entry in entries:
        prompt = prompts[conversation_hash(entry.messages)]
        answers = [rows[(prompt.pk, system, text)] for system, text in entry.answers.items()]
        completions_by_prompt[prompt.pk] = [c.pk for c in answers]
        for pair in combinations(answers, 2):
            if frozenset(c.pk for c in pair) in present_pairs:
                present += 1
                continue
            create_comparison(run, prompt, pair, source=Comparison.Source.IMPORTED, rng=rng)
            created += 1
    return StoredAnswers(
        prompts_created=new_prompts, prompts_present=len(prompts) - new_prompts,
        completions_created=new_completions,
        comparisons_created=created, comparisons_present=present, completions_by_prompt=completions_by_prompt,
    )


def stored_prompts(entries: list[PromptAnswers], source: str) -> tuple[dict[str, Prompt], int]:
    """content hash → Prompt, creating those not yet stored (how many: the second value)."""
    by_hash = {conversation_hash(e.messages): e for e in entries}
    prompts: dict[str, Prompt] = {}
    for chunk in chunks(list(by_hash)):
        prompts.update(Prompt.objects.filter(content_hash__in=chunk).in_bulk(field_name="content_hash"))
    new = [Prompt(messages=e.messages, content_hash=h, category=e.category, source=source[:255])
           for h, e in by_hash.items() if h not in prompts]
    Prompt.objects.bulk_create(new, batch_size=IDS_PER_QUERY)
    prompts.update((prompt.content_hash, prompt) for prompt in new)
    return prompts, len(new)


def stored_answers(entries: list[PromptAnswers],
                   prompts: dict[str, Prompt]) -> tuple[dict[tuple[int, str, str], Completion], int]:
    """(prompt id, system, text) → Completion, creating those not yet stored (how many:
    the second value)."""
    rows: dict[tuple[int, str, str], Completion] = {}
    for chunk in chunks([p.pk for p in prompts.values()]):
        for completion in Completion.objects.filter(prompt_id__in=chunk, policy_version__isnull=True):
            rows.setdefault((completion.prompt_id, completion.external_source, completion.text), completion)
    new = []
    for entry in entries:
        prompt = prompts[conversation_hash(entry.messages)]
        for system, text in entry.answers.items():
            key = (prompt.pk, system, text)
            if key not in rows:
                rows[key] = Completion(prompt=prompt, external_source=system, text=text, ended=True)
                new.append(rows[key])
    Completion.objects.bulk_create(new, batch_size=IDS_PER_QUERY)
    return rows, len(new)
