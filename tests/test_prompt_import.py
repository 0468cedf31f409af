from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from labeling.importing import PromptFileError, import_prompt_file, parse_prompt_file
from labeling.models import Prompt

LIMIT = 1_000_000


def jsonl(*records) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def test_jsonl_with_plain_and_multi_turn_prompts():
    parsed = parse_prompt_file("p.jsonl", jsonl(
        {"prompt": "  Say hi  ", "category": "advice"},
        "",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Tell me more"}]},
    ), LIMIT)
    assert parsed[0].messages == [{"role": "user", "content": "Say hi"}]
    assert parsed[0].category == "advice"
    assert [m["role"] for m in parsed[1].messages] == ["user", "assistant", "user"]


def test_csv_with_prompt_column_and_quoted_newlines():
    data = b'category,prompt\ncoding,"Write a loop,\nplease"\n,Name a colour\n'
    parsed = parse_prompt_file("p.csv", data, LIMIT)
    assert [p.messages[0]["content"] for p in parsed] == ["Write a loop,\nplease", "Name a colour"]


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("p.jsonl", jsonl({"prompt": "ok"}, "{not json"), r"line 2: invalid JSON"),
        ("p.jsonl", jsonl({"prompt": "ok"}, {"text": "no prompt field"}), r"line 2: missing field 'prompt'"),
        ("p.jsonl", jsonl({"prompt": "ok"}, {"prompt": "ok2"}, {"prompt": "   "}), r"line 3: empty prompt"),
        ("p.jsonl", jsonl({"prompt": 42}), r"line 1: 'prompt' must be a string"),
        ("p.jsonl", jsonl(["a", "list"]), r"line 1: expected a JSON object"),
        ("p.jsonl", jsonl({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
         r"line 1: the last message must be the user's"),
        ("p.jsonl", jsonl({"messages": [{"role": "wizard", "content": "hi"}]}), r"line 1: each message needs"),
        ("p.jsonl", b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n', r"line 2: bytes that are not UTF-8"),
        ("p.jsonl", b"\n\n", r"no prompts"),
        ("p.jsonl", b"x" * 101, r"the file is 101 bytes; the limit is 100"),
        ("p.csv", b"text\nhello\n", r"line 1: the header has no 'prompt' column"),
        ("p.csv", b"prompt\nhello\n\"\"\n", r"line 3: empty prompt"),
        ("p.txt", b"hello", r"use a .jsonl or .csv file"),
        ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
         r"line 2: JSON nested too deeply"),
    ],
)
def test_bad_files_name_the_problem_and_import_nothing(db, filename, data, message):
    limit = 100 if len(data) == 101 else LIMIT
    with pytest.raises(PromptFileError, match=message):
        import_prompt_file(filename, data, limit)
    assert Prompt.objects.count() == 0


def test_reimport_skips_prompts_already_present(db):
    first = import_prompt_file("a.jsonl", jsonl({"prompt": "one"}, {"prompt": "two"}, {"prompt": "two"}), LIMIT)
    second = import_prompt_file("b.jsonl", jsonl({"prompt": "two"}, {"prompt": "three"}), LIMIT)
    assert (first.created, first.duplicates) == (2, 1)
    assert (second.created, second.duplicates) == (1, 1)
    assert sorted(p.text for p in Prompt.objects.all()) == ["one", "three", "two"]


def test_management_command_imports_and_reports_errors(db, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl({"prompt": "a"}, {"prompt": "b"}))
    call_command("import_prompts", str(good))
    assert Prompt.objects.count() == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl({"prompt": "c"}, "oops"))
    with pytest.raises(CommandError, match="line 2"):
        call_command("import_prompts", str(bad))
    assert Prompt.objects.count() == 2


def test_starter_prompt_set_loads_at_least_100_varied_prompts(db):
    call_command("load_starter_prompts")
    categories = set(Prompt.objects.values_list("category", flat=True))
    assert Prompt.objects.count() >= 100
    assert {"advice", "explanation", "coding", "writing", "factual", "refusal"} <= categories
    assert Prompt.objects.filter(messages__1__role="assistant").exists()  # multi-turn ones


def test_upload_form_imports_for_staff(client, people):
    client.force_login(people.researcher)
    upload = SimpleUploadedFile("p.jsonl", jsonl({"prompt": "uploaded"}))
    response = client.post(reverse("import_prompts"), {"file": upload}, follow=True)
    assert b"Imported 1 prompts" in response.content
    assert Prompt.objects.get().text == "uploaded"


def test_upload_form_shows_the_line_and_imports_nothing(client, people):
    client.force_login(people.researcher)
    upload = SimpleUploadedFile("p.jsonl", jsonl({"prompt": "fine"}, {"prompt": ""}))
    response = client.post(reverse("import_prompts"), {"file": upload})
    assert response.status_code == 400
    assert b"Nothing was imported: line 2: empty prompt" in response.content
    assert Prompt.objects.count() == 0


def test_upload_form_refuses_an_oversized_file(client, people, settings):
    settings.PREFLOOP_MAX_IMPORT_BYTES = 50
    client.force_login(people.researcher)
    upload = SimpleUploadedFile("p.jsonl", jsonl(*[{"prompt": f"prompt {i}"} for i in range(10)]))
    response = client.post(reverse("import_prompts"), {"file": upload})
    assert b"the limit is 50 bytes" in response.content
    assert Prompt.objects.count() == 0


# Files that used to half-work (issue 12).

def test_a_file_with_more_prompts_than_the_database_takes_parameters_imports(db):
    """The duplicate check used to send every hash in one query: past 32,766 prompts
    stock SQLite refused it (PostgreSQL past 65,535). This SQLite allows 250,000, so the
    test lowers the connection's limit to stock's."""
    import sqlite3

    from django.db import connection

    connection.ensure_connection()
    if connection.vendor == "sqlite":
        connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
    data = jsonl(*({"prompt": f"Prompt number {i}"} for i in range(40_000)))
    assert import_prompt_file("big.jsonl", data, 10 * LIMIT).created == 40_000
    again = import_prompt_file("big.jsonl", data, 10 * LIMIT)
    assert (again.created, again.duplicates) == (0, 40_000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # A stray quote used to merge the rest of the file into one prompt.
        (b'prompt\none\n"two\nthree\nfour\n', r"line 3: unreadable CSV"),
        (b'prompt\none\n"two" and more\nthree\n', r"line 3: unreadable CSV"),
        (b'category,prompt\na,one\nb\n', r"line 3: 2 columns expected"),
        (b'prompt\none\ntwo\n' + b"x" * 140_000 + b"\n", r"line 4: unreadable CSV \(field larger"),
        (b'prompt\none\n"multi\nline"\nnul \x00 here\n', r"line 5: the text contains a NUL character"),
    ],
)
def test_csv_problems_are_reported_at_the_line_they_start(db, data, message):
    with pytest.raises(PromptFileError, match=message):
        import_prompt_file("p.csv", data, LIMIT)
    assert Prompt.objects.count() == 0


def test_a_literal_quote_inside_a_field_is_kept():
    parsed = parse_prompt_file("p.csv", b'prompt\nsay "hi" twice\n"quoted, with ""escaped"" quotes"\n', LIMIT)
    assert [p.messages[-1]["content"] for p in parsed] == ['say "hi" twice', 'quoted, with "escaped" quotes']


def test_jsonl_counts_lines_as_editors_do_and_refuses_nul(db):
    parsed = parse_prompt_file("p.jsonl", '{"prompt": "one"}\n{"prompt": "two\u2028still two"}\n'.encode(), LIMIT)
    assert [p.messages[-1]["content"] for p in parsed] == ["one", "two\u2028still two"]
    with pytest.raises(PromptFileError, match="line 2: the text contains a NUL character"):
        import_prompt_file("p.jsonl", jsonl({"prompt": "ok"}, {"prompt": "nul \u0000"}), LIMIT)
    assert Prompt.objects.count() == 0
