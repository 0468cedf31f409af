"""Preference datasets in and out: JSONL files of (prompt, chosen, rejected) in the
formats people already have, imported all or nothing under a name.

Accepted lines (the format is read per line; `score_chosen` / `score_rejected` are
optional on any of them, UltraFeedback-style, and kept as strength):
- TRL standard: `prompt`, `chosen`, `rejected` strings; without `prompt` the shared
  prefix of the two answers is the prompt (TRL's implicit prompt).
- TRL conversational: message lists; `prompt` ends with the user's turn and each answer
  is one assistant message; without `prompt` the shared leading messages are the prompt.
- Anthropic HH-RLHF: `chosen` / `rejected` transcripts ("\\n\\nHuman: … \\n\\nAssistant: …")
  whose shared turns are the prompt and whose last assistant turns are the answers.

A standard prompt becomes a one-message conversation, as a plain-text prompt file does,
so every consumer sees one shape (the chat template is applied when training).

The file is read twice, streaming: the first pass checks every line and stops at the
first problem, naming its line, before anything is written; the second writes the pairs
in batches. A dataset is used only once marked ready, and a failure in the second pass
deletes what was written, so a run never sees half a file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from labeling.importing import PromptFileError, checked_messages, json_object
from labeling.models import ImportedPair, PreferenceDataset

BATCH_SIZE = 1000
"""Pairs per INSERT: 9 columns × 1000 stays far below SQLite's 32,766 and PostgreSQL's
65,535 bound parameters."""

HH_MARKER = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}

Progress = Callable[[int, int], None]
"""Called with (lines done, lines to do) as the import goes."""


class PreferenceFileError(ValueError):
    """The file cannot be imported; the message names the line."""


@dataclass(frozen=True)
class ParsedPair:
    line: int
    format: str
    prompt: list[dict]
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None

    @property
    def is_identical(self) -> bool:
        """Both answers the same: no preference to learn (HH-RLHF has a few)."""
        return self.chosen == self.rejected

    @property
    def is_tie(self) -> bool:
        """Equal scores (UltraFeedback has many): no preference either."""
        return self.score_chosen is not None and self.score_chosen == self.score_rejected

    @property
    def states_no_preference(self) -> bool:
        return self.is_identical or self.is_tie

    @property
    def score_gap(self) -> float | None:
        return None if self.score_chosen is None else self.score_chosen - self.score_rejected


# ---------------------------------------------------------------------------- reading


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines. Lines end at "\\n" only, as in the
    prompt import: JSON allows U+2028 raw inside strings."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise PreferenceFileError(f"line {number}: bytes that are not UTF-8 (at byte {error.start} of the "
                                          f"line)") from None
            if text.strip():
                yield number, text


def count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def parse_pairs(lines: Iterable[tuple[int, str]]) -> Iterator[ParsedPair]:
    for number, text in lines:
        record = json_object(text, number, PreferenceFileError)
        try:
            yield parse_record(record, number)
        except PromptFileError as error:  # the prompt checks of labeling.importing
            raise PreferenceFileError(str(error)) from None


def parse_record(record: dict, line: int) -> ParsedPair:
    for key in ("chosen", "rejected"):
        if key not in record:
            raise PreferenceFileError(f"line {line}: missing field '{key}'")
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if "prompt" in record:
            prompt_text = record["prompt"]
            if not isinstance(prompt_text, str):
                raise PreferenceFileError(f"line {line}: 'prompt' must be a string when the answers are strings")
            prompt = checked_messages([{"role": "user", "content": prompt_text}], line)
            pair = ("standard", prompt, checked_text(chosen, line), checked_text(rejected, line))
        elif chosen.startswith("\n\nHuman:"):
            pair = ("hh-rlhf", *split_conversation(hh_turns(chosen, "chosen", line),
                                                   hh_turns(rejected, "rejected", line), line))
        else:
            pair = ("standard (implicit prompt)", *split_text(checked_text(chosen, line),
                                                              checked_text(rejected, line), line))
    elif isinstance(chosen, list) and isinstance(rejected, list):
        if "prompt" in record:
            prompt = checked_messages(record["prompt"], line)
            pair = ("conversational", prompt, single_answer(chosen, "chosen", line),
                    single_answer(rejected, "rejected", line))
        else:
            pair = ("conversational (implicit prompt)", *split_conversation(
                checked_turns(chosen, "chosen", line), checked_turns(rejected, "rejected", line), line))
    else:
        raise PreferenceFileError(f"line {line}: 'chosen' and 'rejected' must both be strings or both be message "
                                  "lists")
    return ParsedPair(line, *pair, *scores(record, line))


def checked_text(text: str, line: int) -> str:
    # PostgreSQL cannot store NUL in text; SQLite can. One rule for both: refused.
    if "\x00" in text:
        raise PreferenceFileError(f"line {line}: the text contains a NUL character")
    return text


def checked_turns(messages: object, field: str, line: int) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise PreferenceFileError(f"line {line}: '{field}' must be a non-empty message list")
    turns = []
    for turn in messages:
        if (not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant")
                or not isinstance(turn.get("content"), str)):
            raise PreferenceFileError(f"line {line}: each message of '{field}' needs a 'role' (system, user, "
                                      "assistant) and a string 'content'")
        turns.append({"role": turn["role"], "content": checked_text(turn["content"], line)})
    return turns


def single_answer(messages: object, field: str, line: int) -> str:
    turns = checked_turns(messages, field, line)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise PreferenceFileError(f"line {line}: '{field}' must be one assistant message (the answer to the prompt)")
    return turns[0]["content"]


def hh_turns(transcript: str, field: str, line: int) -> list[dict]:
    """An HH-RLHF transcript as messages: "\\n\\nHuman: hi\\n\\nAssistant: hello" →
    [user: hi, assistant: hello]."""
    parts = HH_MARKER.split(checked_text(transcript, line))
    if parts[0].strip() or len(parts) < 3:
        raise PreferenceFileError(f"line {line}: '{field}' is not an HH-RLHF transcript (\"\\n\\nHuman: …"
                                  "\\n\\nAssistant: …\")")
    roles, contents = parts[1::2], parts[2::2]  # split() with one group alternates marker and text
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(roles, contents, strict=True)]


def split_conversation(chosen: list[dict], rejected: list[dict], line: int) -> tuple[list[dict], str, str]:
    """The shared leading turns are the prompt (TRL's extract_prompt); what follows must
    be one assistant turn on each side."""
    if chosen == rejected:  # no preference: skipped by the caller, so the prompt is not checked
        return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]
    split = extract_prompt({"chosen": chosen, "rejected": rejected})
    prompt = checked_prompt(split["prompt"], line)
    answers = []
    for field in ("chosen", "rejected"):
        rest = split[field]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise PreferenceFileError(f"line {line}: after the turns they share, '{field}' must be one assistant "
                                      f"turn ({len(rest)} turns differ)")
        answers.append(rest[0]["content"])
    return prompt, answers[0], answers[1]


def checked_prompt(turns: list[dict], line: int) -> list[dict]:
    if not turns:
        raise PreferenceFileError(f"line {line}: the answers share no prompt; give a 'prompt' field")
    return checked_messages(turns, line)


def split_text(chosen: str, rejected: str, line: int) -> tuple[list[dict], str, str]:
    """An implicit prompt in plain strings: their shared start, cut back to the last
    space or line break in it. (TRL's extract_prompt cuts at the first differing
    character, which is fine while prompt and answer are joined again, but here the
    prompt becomes the user's turn: "The sky is blue" / "The sea is green" must not give
    the prompt "The s".) The answers keep the whitespace they start with."""
    if chosen == rejected:
        raise PreferenceFileError(f"line {line}: the two answers are the same and no 'prompt' says where the "
                                  "prompt ends")
    shared = os.path.commonprefix([chosen, rejected])
    cut = max(shared.rfind(" "), shared.rfind("\n"))
    if cut <= 0 or not shared[:cut].strip():
        raise PreferenceFileError(f"line {line}: the answers share no prompt; give a 'prompt' field")
    return checked_prompt([{"role": "user", "content": chosen[:cut]}], line), chosen[cut:], rejected[cut:]


def extract_prompt(example: dict) -> dict:
    # TRL's own function, for message lists (whole turns); imported here because importing
    # trl takes seconds (torch), and only an import job, never a page, reaches this.
    from trl.data_utils import extract_prompt as trl_extract_prompt

    return trl_extract_prompt(example)


def scores(record: dict, line: int) -> tuple[float | None, float | None]:
    present = [key in record for key in ("score_chosen", "score_rejected")]
    if not any(present):
        return None, None
    if not all(present):
        raise PreferenceFileError(f"line {line}: give both 'score_chosen' and 'score_rejected', or neither")
    values = []
    for key in ("score_chosen", "score_rejected"):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PreferenceFileError(f"line {line}: '{key}' must be a finite number")
        values.append(float(value))
    if values[0] < values[1]:
        raise PreferenceFileError(f"line {line}: 'score_chosen' ({values[0]:g}) is below 'score_rejected' "
                                  f"({values[1]:g})")
    return values[0], values[1]


# --------------------------------------------------------------------------- strength


def strength_cutpoints(gaps: list[float]) -> list[float]:
    """The first and second terciles of the score gaps: a pair whose gap is at most the
    first is "slightly better" (strength 1), above the second "much better" (3). Scales
    differ between datasets (1–10, 0–1, logits), so the cut is the dataset's own."""
    if not gaps:
        return []
    ordered = sorted(gaps)
    return [ordered[(len(ordered) - 1) // 3], ordered[(2 * (len(ordered) - 1)) // 3]]


def strength_for(gap: float | None, cutpoints: list[float]) -> int | None:
    if gap is None or not cutpoints:
        return None
    return 1 if gap <= cutpoints[0] else 2 if gap <= cutpoints[1] else 3


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class CheckedFile:
    pairs: int
    skipped_identical: int
    skipped_ties: int
    formats: list[str]
    strength_cutpoints: list[float]
    lines: int


def check_file(path: Path, on_progress: Progress | None = None) -> CheckedFile:
    """The first pass: every line parsed and checked, nothing kept but counts and gaps."""
    total = count_lines(path)
    pairs = identical = ties = 0
    formats: dict[str, None] = {}
    gaps: list[float] = []
    for pair in parse_pairs(report_lines(numbered_lines(path), total, 0, on_progress)):
        formats[pair.format] = None
        identical += pair.is_identical
        ties += pair.is_tie and not pair.is_identical
        if pair.states_no_preference:
            continue
        pairs += 1
        if pair.score_gap is not None:
            gaps.append(pair.score_gap)
    if not pairs:
        raise PreferenceFileError("the file holds no preference pairs" + (
            f" ({identical} lines with identical answers, {ties} with equal scores)" if identical or ties else ""))
    return CheckedFile(pairs, identical, ties, list(formats), strength_cutpoints(gaps), total)


def report_lines(lines: Iterator[tuple[int, str]], total: int, offset: int,
                 on_progress: Progress | None) -> Iterator[tuple[int, str]]:
    """Pass the lines through, reporting every 1,000 (each pass is half of the work)."""
    number = 0
    for number, text in lines:
        if on_progress and number % 1000 == 0:
            on_progress(offset + number, 2 * total)
        yield number, text
    if on_progress:
        on_progress(offset + total, 2 * total)


class ImportSuperseded(Exception):
    """A newer attempt at the same import took over (the job was sent again while this
    worker was taken for dead): this one stops and leaves the dataset to it."""


def import_dataset(dataset: PreferenceDataset, path: Path, on_progress: Progress | None = None,
                   still_current: Callable[[], bool] = lambda: True) -> PreferenceDataset:
    """Check the whole file, then write its pairs into the dataset and mark it ready.
    Anything that stops it (a PreferenceFileError, a database error, Ctrl-C) leaves the
    dataset failed, with no pairs, unless a newer attempt took over (`still_current`
    turned False): that one owns the dataset now."""
    try:
        checked = check_file(path, on_progress)
        write_pairs(dataset, path, checked, on_progress, still_current)
    except ImportSuperseded:
        raise
    except BaseException as error:
        if still_current():
            fail_import(dataset, str(error) if isinstance(error, PreferenceFileError)
                        else f"{type(error).__name__}: {error}")
        raise
    return dataset


def fail_import(dataset: PreferenceDataset, reason: str) -> None:
    """Mark an unfinished import failed and delete what it wrote (a ready dataset, which
    runs may use, is never touched)."""
    with transaction.atomic():
        locked = PreferenceDataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if locked is None or locked.status == PreferenceDataset.Status.READY:
            return
        ImportedPair.objects.filter(dataset=dataset).delete()
        PreferenceDataset.objects.filter(pk=dataset.pk).update(status=PreferenceDataset.Status.FAILED, pair_count=0,
                                                               error=reason or "the import stopped")
    dataset.refresh_from_db()


def write_pairs(dataset: PreferenceDataset, path: Path, checked: CheckedFile, on_progress: Progress | None,
                still_current: Callable[[], bool]) -> None:
    def flush_if_current(batch: list[ImportedPair]) -> int:
        if not still_current():
            raise ImportSuperseded()
        return flush(batch)

    # A retried import (its worker died midway) starts from an empty dataset.
    ImportedPair.objects.filter(dataset=dataset).delete()
    batch: list[ImportedPair] = []
    for pair in parse_pairs(report_lines(numbered_lines(path), checked.lines, checked.lines, on_progress)):
        if pair.states_no_preference:
            continue
        batch.append(ImportedPair(
            dataset=dataset, line=pair.line, prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected,
            score_chosen=pair.score_chosen, score_rejected=pair.score_rejected,
            strength=strength_for(pair.score_gap, checked.strength_cutpoints),
        ))
        if len(batch) == BATCH_SIZE:
            flush_if_current(batch)
    flush_if_current(batch)
    with transaction.atomic():
        locked = PreferenceDataset.objects.select_for_update().get(pk=dataset.pk)
        if not still_current() or locked.status != PreferenceDataset.Status.IMPORTING:
            raise ImportSuperseded()
        written = ImportedPair.objects.filter(dataset=dataset).count()
        if written != checked.pairs:  # the file changed between the passes, or two writers crossed
            raise PreferenceFileError(f"{written} pairs were written where {checked.pairs} were checked (did the "
                                      "file change during the import?)")
        dataset.status, dataset.error = PreferenceDataset.Status.READY, ""
        dataset.pair_count, dataset.skipped_identical = checked.pairs, checked.skipped_identical
        dataset.skipped_ties = checked.skipped_ties
        dataset.formats, dataset.strength_cutpoints = checked.formats, checked.strength_cutpoints
        dataset.save(update_fields=["status", "error", "pair_count", "skipped_identical", "skipped_ties", "formats",
                                    "strength_cutpoints"])


def flush(batch: list[ImportedPair]) -> int:
    count = len(batch)
    ImportedPair.objects.bulk_create(batch)
    batch.clear()
    return count


# ---------------------------------------------------------------------------- export

EXPORT_FORMATS = ("conversational", "standard")


def check_export(dataset: PreferenceDataset, layout: str) -> None:
    """Refuse (ValueError) an export that would stop midway, before anything is sent."""
    if layout not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {layout!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if layout == "standard" and any(len(p) != 1 for p in dataset.pairs.values_list("prompt", flat=True).iterator()):
        raise ValueError("this dataset has multi-turn prompts: export it as conversational")


def export_rows(dataset: PreferenceDataset, layout: str = "conversational") -> Iterator[dict]:
    """The dataset's pairs as TRL rows with an explicit prompt, streamed in id order.
    `standard` writes plain strings and needs one-turn prompts (a multi-turn prompt has
    no plain-string form); `conversational` always works. Scores go out as they came."""
    if layout not in EXPORT_FORMATS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(EXPORT_FORMATS)}")
    for pair in dataset.pairs.order_by("pk").iterator(chunk_size=BATCH_SIZE):
        if layout == "standard":
            if len(pair.prompt) != 1:
                raise ValueError(f"pair from line {pair.line} has a {len(pair.prompt)}-turn prompt; export it as "
                                 "conversational")
            row = {"prompt": pair.prompt[0]["content"], "chosen": pair.chosen, "rejected": pair.rejected}
        else:
            row = {"prompt": pair.prompt, "chosen": [{"role": "assistant", "content": pair.chosen}],
                   "rejected": [{"role": "assistant", "content": pair.rejected}]}
        if pair.score_chosen is not None:
            row |= {"score_chosen": pair.score_chosen, "score_rejected": pair.score_rejected}
        yield row
