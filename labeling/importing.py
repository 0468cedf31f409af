"""Prompt files in, all or nothing: a file is parsed and checked completely before a
single row is written, and the first problem is reported with its line number."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import PurePath

from django.db import transaction

from labeling.models import Prompt, conversation_hash

ROLES = {"system", "user", "assistant"}
# Hashes per duplicate-check query: far below SQLite's 32,766 and PostgreSQL's 65,535
# bound parameters, whatever the file's size.
HASHES_PER_QUERY = 500


class PromptFileError(ValueError):
    """The file cannot be imported; the message names the line."""


@dataclass(frozen=True)
class ParsedPrompt:
    messages: list[dict]
    category: str = ""


@dataclass(frozen=True)
class ImportResult:
    created: int
    duplicates: int


def parse_prompt_file(filename: str, data: bytes, max_bytes: int) -> list[ParsedPrompt]:
    """JSONL (`{"prompt": ...}` or `{"messages": [...]}` per line) or CSV with a `prompt`
    column, chosen by the file's extension."""
    if len(data) > max_bytes:
        raise PromptFileError(f"the file is {len(data)} bytes; the limit is {max_bytes} bytes")
    suffix = PurePath(filename).suffix.lower()
    if suffix not in {".jsonl", ".json", ".csv"}:
        raise PromptFileError(f"{filename!r}: use a .jsonl or .csv file")
    text = decode_utf8(data)
    prompts = parse_csv(text) if suffix == ".csv" else parse_jsonl(text)
    if not prompts:
        raise PromptFileError("the file holds no prompts")
    return prompts


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PromptFileError(f"line {line}: bytes that are not UTF-8 (at byte {error.start})") from None


def parse_jsonl(text: str) -> list[ParsedPrompt]:
    prompts = []
    # Lines end at "\n" only: splitlines() would also break at U+2028 and the like, which
    # JSON allows raw inside strings, and then count lines differently from an editor.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = json_object(line, number, PromptFileError)
        prompts.append(ParsedPrompt(messages_from_record(record, number), category_from(record, number)))
    return prompts


def json_object(line: str, number: int, error: type[ValueError]) -> dict:
    """One JSONL line as an object, or `error` naming the line: every import reads its
    lines with this, so they all refuse the same things the same way."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as problem:
        raise error(f"line {number}: invalid JSON ({problem.msg})") from None
    except RecursionError:  # thousands of nested brackets
        raise error(f"line {number}: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise error(f"line {number}: expected a JSON object")
    return record


def messages_from_record(record: dict, line: int) -> list[dict]:
    if "messages" in record:
        return checked_messages(record["messages"], line)
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise PromptFileError(f"line {line}: 'prompt' must be a string")
        if not prompt.strip():
            raise PromptFileError(f"line {line}: empty prompt")
        refuse_nul(prompt, line)
        return [{"role": "user", "content": prompt.strip()}]
    raise PromptFileError(f"line {line}: missing field 'prompt' (or 'messages')")


def checked_messages(messages: object, line: int) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise PromptFileError(f"line {line}: 'messages' must be a non-empty list")
    checked = []
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise PromptFileError(
                f"line {line}: each message needs a 'role' ({', '.join(sorted(ROLES))}) and a string 'content'"
            )
        if not turn["content"].strip():
            raise PromptFileError(f"line {line}: empty prompt (a message has no content)")
        refuse_nul(turn["content"], line)
        checked.append({"role": turn["role"], "content": turn["content"].strip()})
    if checked[-1]["role"] != "user":
        raise PromptFileError(f"line {line}: the last message must be the user's turn to answer")
    return checked


def refuse_nul(text: str, line: int) -> None:
    """PostgreSQL cannot store NUL in text; SQLite can. One rule for both: refused."""
    if "\x00" in text:
        raise PromptFileError(f"line {line}: the text contains a NUL character")


def category_from(record: dict, line: int) -> str:
    category = record.get("category", "")
    if not isinstance(category, str) or len(category) > 64:
        raise PromptFileError(f"line {line}: 'category' must be a string of at most 64 characters")
    refuse_nul(category, line)
    return category


def parse_csv(text: str) -> list[ParsedPrompt]:
    """Strict CSV: a quote that opens a field must close it and be followed by a comma or
    the end of the line. (Python's default lets a stray quote swallow the rest of the
    file into one prompt.) Problems are reported at the line where their row starts."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise PromptFileError(f"line 1: unreadable CSV ({error})") from None
    if "prompt" not in header:
        raise PromptFileError("line 1: the header has no 'prompt' column")
    prompts = []
    row_start = reader.line_num + 1
    try:
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise PromptFileError(f"line {row_start}: {len(header)} columns expected (check its quotes)")
            prompt = row["prompt"].strip()
            if not prompt:
                raise PromptFileError(f"line {row_start}: empty prompt")
            refuse_nul(prompt, row_start)
            category = (row.get("category") or "").strip()
            if len(category) > 64:
                raise PromptFileError(f"line {row_start}: 'category' is longer than 64 characters")
            refuse_nul(category, row_start)
            prompts.append(ParsedPrompt([{"role": "user", "content": prompt}], category))
            row_start = reader.line_num + 1
    except csv.Error as error:
        raise PromptFileError(f"line {row_start}: unreadable CSV ({error})") from None
    return prompts


@transaction.atomic
def import_prompts(prompts: list[ParsedPrompt], source: str) -> ImportResult:
    """Store the prompts that are not already there (the same conversation imported twice
    is one prompt)."""
    by_hash: dict[str, ParsedPrompt] = {}
    for prompt in prompts:
        by_hash.setdefault(conversation_hash(prompt.messages), prompt)
    hashes = list(by_hash)
    existing = set()
    for start in range(0, len(hashes), HASHES_PER_QUERY):
        chunk = hashes[start:start + HASHES_PER_QUERY]
        existing.update(Prompt.objects.filter(content_hash__in=chunk).values_list("content_hash", flat=True))
    new = [
        Prompt(messages=p.messages, content_hash=h, category=p.category, source=source[:255])
        for h, p in by_hash.items()
        if h not in existing
    ]
    Prompt.objects.bulk_create(new, batch_size=500)
    return ImportResult(created=len(new), duplicates=len(prompts) - len(new))


def import_prompt_file(filename: str, data: bytes, max_bytes: int) -> ImportResult:
    return import_prompts(parse_prompt_file(filename, data, max_bytes), source=PurePath(filename).name)
