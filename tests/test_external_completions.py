"""Answers of outside systems imported as blind comparisons of a run, and ranked with the
run's policy versions by one Bradley–Terry fit (issue 11, item 2)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils.html import escape

from labeling import services as labeling
from labeling.external_completions import CompletionFileError, parse_completion_file
from labeling.models import Comparison, Completion, Label, Prompt
from labeling.presenters import comparison_for_annotator
from labeling.services import LabelInput
from training import services
from training.games import player_games, run_ranking
from training.ml.generation import Sample
from training.ml.rating import fit_bradley_terry
from training.models import Job

pytestmark = pytest.mark.django_db
LIMIT = 1_000_000


def jsonl(*records) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def two_systems(count: int, start: int = 0) -> bytes:
    return jsonl(*({"prompt": f"Question {i}?", "answers": {"alpha": f"alpha says {i}", "beta": f"beta says {i}"}}
                   for i in range(start, start + count)))


def stored_counts() -> tuple[int, int, int]:
    return Prompt.objects.count(), Completion.objects.count(), Comparison.objects.count()


def test_a_good_file_queues_blind_comparisons_of_every_pair(base_run):
    data = jsonl(
        {"prompt": "Name a fruit.", "answers": {"alpha": "Apple.", "beta": "Pear.", "gamma": "Plum."}},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Bye?"}], "answers": {"alpha": "Bye!", "beta": "Ciao!"}},
        # One answer per line: gathered by prompt.
        {"prompt": "Count to two.", "system": "alpha", "answer": "1, 2"},
        {"prompt": "Count to two.", "system": "beta", "answer": "one, two"},
    )
    result = services.import_external_completions(base_run, "systems.jsonl", data, rng=random.Random(0))
    assert (result.prompts_created, result.completions_created, result.comparisons_created) == (3, 7, 5)
    assert result.job is None
    comparisons = list(Comparison.objects.all())
    assert len(comparisons) == 5  # 3 pairs + 1 + 1
    assert {c.source for c in comparisons} == {Comparison.Source.IMPORTED}
    assert {c.run_id for c in comparisons} == {base_run.pk}
    pairs = Counter(frozenset(c.origin for c in comparison.ordered_completions()) for comparison in comparisons)
    assert pairs == {frozenset({"alpha", "beta"}): 3, frozenset({"alpha", "gamma"}): 1,
                     frozenset({"beta", "gamma"}): 1}
    assert Prompt.objects.get(content_hash__isnull=False, messages__0__content="Hi").source == "systems.jsonl"
    assert Completion.objects.filter(external_source="gamma").get().text == "Plum."


def test_the_order_shown_is_shuffled_and_the_system_names_never_reach_the_annotator(base_run):
    services.import_external_completions(base_run, "s.jsonl", two_systems(40), rng=random.Random(1))
    lefts = Counter(comparison.ordered_completions()[0].origin for comparison in Comparison.objects.all())
    assert lefts["alpha"] > 5 and lefts["beta"] > 5  # about 20 each, not always the file's order
    payload = json.dumps(comparison_for_annotator(Comparison.objects.first()))
    assert "alpha says" in payload and '"alpha"' not in payload and '"beta"' not in payload


def test_importing_again_reuses_prompts_and_answers_and_queues_no_pair_twice(base_run):
    services.import_external_completions(base_run, "a.jsonl", two_systems(3))
    again = services.import_external_completions(base_run, "b.jsonl", jsonl(
        {"prompt": "Question 0?", "answers": {"alpha": "alpha says 0", "beta": "beta says 0", "gamma": "new"}},
        {"prompt": "Question 9?", "answers": {"alpha": "a9", "beta": "b9"}},
    ))
    assert (again.prompts_created, again.prompts_present) == (1, 1)
    assert again.completions_created == 3  # gamma's, and both answers to the new prompt
    assert (again.comparisons_created, again.comparisons_present) == (3, 1)  # alpha–beta on Question 0 is queued
    assert stored_counts() == (4, 9, 6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (jsonl({"prompt": "ok", "answers": {"a": "1", "b": "2"}}, "{not json"), r"line 2: invalid JSON"),
        (jsonl({"prompt": "ok", "answers": {"a": "1", "b": "2"}}, {"prompt": "solo", "answers": {"a": "x"}}),
         r"line 2: 1 system\(s\) answer this prompt \('a'\); a comparison needs at least 2"),
        (jsonl({"prompt": "ok", "answers": {"a": "1", "b": "   "}}), r"line 1: the answer of 'b' is empty"),
        (jsonl({"prompt": "ok", "answers": {"a": "1", "b": "2"}}, {"prompt": "x", "answers": {"a": "1\u0000",
                                                                                          "b": "2"}}),
         r"line 2: the text contains a NUL character"),
        (jsonl({"prompt": "ok", "answers": {"a\u0000": "1", "b": "2"}}), r"line 1: the text contains a NUL"),
        (jsonl({"prompt": "ok", "answers": {"": "1", "b": "2"}}), r"line 1: a system name must be a non-empty"),
        (jsonl({"prompt": "ok", "answers": {"x" * 201: "1", "b": "2"}}), r"line 1: a system name is longer than 200"),
        (jsonl({"prompt": "ok", "answers": {"v3": "1", "b": "2"}}), r"line 1: 'v3' names a policy version"),
        (jsonl({"prompt": "ok", "answers": {"a": 1, "b": "2"}}), r"line 1: the answer of 'a' must be a string"),
        (jsonl({"prompt": "ok", "answers": ["a", "b"]}), r"line 1: 'answers' must be an object"),
        (jsonl({"prompt": "ok"}), r"line 1: missing field 'answers'"),
        (jsonl({"answers": {"a": "1", "b": "2"}}), r"line 1: missing field 'prompt'"),
        (jsonl({"prompt": "ok", "system": "a", "answer": "1"}, {"prompt": "ok", "system": "a", "answer": "2"}),
         r"line 2: a second answer from 'a' to the prompt of line 1"),
        (b'{"prompt": "ok", "answers": {"a": "1", "b": "caf\xe9"}}', r"line 1: bytes that are not UTF-8"),
        (b"\n\n", r"no prompts"),
    ],
)
def test_bad_files_name_the_line_and_store_nothing(base_run, data, message):
    with pytest.raises(CompletionFileError, match=message):
        services.import_external_completions(base_run, "bad.jsonl", data)
    assert stored_counts() == (0, 0, 0)


def test_a_file_over_the_size_limit_or_not_jsonl_is_refused(base_run, settings):
    settings.PREFLOOP_MAX_IMPORT_BYTES = 50
    with pytest.raises(CompletionFileError, match="the limit is 50 bytes"):
        services.import_external_completions(base_run, "big.jsonl", two_systems(5))
    with pytest.raises(CompletionFileError, match="use a .jsonl file"):
        parse_completion_file("s.csv", b"prompt,answer\n", LIMIT)
    assert stored_counts() == (0, 0, 0)


def test_a_file_larger_than_the_database_takes_parameters_imports(base_run):
    """Lookups go in chunks: stock SQLite used to allow 999 parameters per query."""
    import sqlite3

    from django.db import connection

    connection.ensure_connection()
    if connection.vendor == "sqlite":
        connection.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    first = services.import_external_completions(base_run, "big.jsonl", two_systems(1200))
    again = services.import_external_completions(base_run, "big.jsonl", two_systems(1200))
    assert (first.comparisons_created, again.comparisons_created, again.comparisons_present) == (1200, 0, 1200)
    assert stored_counts() == (1200, 2400, 1200)


def fake_sampling(monkeypatch):
    """The policy's answers without a model: `v<number> on <prompt>`."""

    def sample(policy, conversations, samples, config, on_batch=None, precision=None, engine="transformers"):
        return [[Sample(f"v{policy.number} on {c[-1]['content']}", True, 4, (1, 2, 3, 4)) for _ in range(samples)]
                for c in conversations]

    monkeypatch.setattr("training.services.generation.sample_completions", sample)


def test_a_version_answers_the_same_prompts_and_meets_each_system(base_run, monkeypatch,
                                                                  django_capture_on_commit_callbacks):
    fake_sampling(monkeypatch)
    with django_capture_on_commit_callbacks() as sent:
        result = services.import_external_completions(base_run, "s.jsonl", jsonl(
            {"prompt": "Question 0?", "answers": {"alpha": "a0", "beta": "b0"}},
            {"prompt": "Question 1?", "answers": {"alpha": "a1"}},  # one system is enough against a version
        ), against_version=base_run.head)
    assert len(sent) == 1  # the job goes to the gpu queue once committed (no broker here: it fails to send)
    job = result.job
    assert job.kind == Job.Kind.GENERATE and job.params["samples"] == 1
    job.status = Job.Status.PENDING
    job.save()
    assert services.run_job_now(job).status == Job.Status.SUCCEEDED
    versus = [c for c in Comparison.objects.all() if any(x.policy_version_id for x in c.ordered_completions())]
    assert len(versus) == 3  # v0 against alpha and beta on Question 0, against alpha on Question 1
    assert {c.source for c in versus} == {Comparison.Source.IMPORTED}
    assert sorted(sorted(x.origin for x in c.ordered_completions()) for c in versus) == [
        ["alpha", "v0"], ["alpha", "v0"], ["beta", "v0"]]
    assert Completion.objects.filter(policy_version=base_run.head).count() == 2  # one answer per prompt


def test_against_a_version_of_another_run_is_refused(base_run):
    other = services.create_run("other", base_run.base_model_dir)
    with pytest.raises(CompletionFileError, match="is not a version of run 'default'"):
        services.import_external_completions(base_run, "s.jsonl", two_systems(1), against_version=other.head)
    assert stored_counts() == (0, 0, 0)


def label(comparison: Comparison, annotator, winner: str) -> None:
    left = comparison.ordered_completions()[0].origin
    labeling.submit_label(annotator, LabelInput(comparison.pk, "a" if left == winner else "b"),
                          require_lease=False)


def pairs_of(first: str, second: str) -> list[Comparison]:
    return [c for c in Comparison.objects.order_by("pk")
            if {x.origin for x in c.ordered_completions()} == {first, second}]


@pytest.fixture
def arena(base_run, people, monkeypatch):
    """Hand-worked: alpha beats v0 3–1 and beta 7–1; beta never meets v0 in a label.
    Without a prior, the fit is exact on a tree of pairs: alpha = ln 3 over v0, beta =
    alpha − ln 7 = ln(3/7); so the order is alpha, v0, beta."""
    fake_sampling(monkeypatch)
    result = services.import_external_completions(base_run, "arena.jsonl", two_systems(8),
                                                  against_version=base_run.head, rng=random.Random(2))
    job = result.job
    job.status = Job.Status.PENDING
    job.save()
    services.run_job_now(job)
    robot = get_user_model().objects.create_user("oracle-bot", password=None)
    for i, comparison in enumerate(pairs_of("alpha", "v0")[:4]):
        label(comparison, people.annotator, "alpha" if i < 3 else "v0")
        # A simulated annotator's labels never count.
        labeling.submit_label(robot, LabelInput(comparison.pk, "a"), origin=Label.Origin.SIMULATED,
                              require_lease=False)
    for i, comparison in enumerate(pairs_of("alpha", "beta")):
        label(comparison, people.annotator, "alpha" if i < 7 else "beta")
    return base_run


def test_systems_and_versions_are_ranked_together_as_worked_by_hand(arena):
    games, systems = player_games(arena)
    assert systems == {"alpha", "beta"}
    assert Counter((min(a, b), max(a, b)) for a, b, _ in games) == {("alpha", "v0"): 4, ("alpha", "beta"): 8}
    exact = {s.player: s.score for s in fit_bradley_terry(games, anchor="v0", prior_variance=None)}
    assert exact == {"v0": 0.0, "alpha": pytest.approx(math.log(3)), "beta": pytest.approx(math.log(3 / 7))}
    ranking = run_ranking(arena)
    assert ranking.anchor == "v0" and ranking.games == 12
    assert [s.player for s in ranking.strengths] == ["alpha", "v0", "beta"]
    alpha = ranking.strengths[0]
    assert 0.8 < alpha.score < math.log(3)  # the weak prior pulls it a little towards the anchor
    assert alpha.low < 0 < alpha.high  # four games: the interval is wide


def test_the_progress_page_shows_the_joint_ranking_and_plot(client, people, arena):
    client.force_login(people.researcher)
    response = client.get(reverse("progress"), {"run": arena.pk})
    assert response.status_code == 200
    html = response.content.decode()
    table = html[html.index(f'id="ranking-{arena.pk}"'):]
    table = table[:table.index("</table>")]
    assert "Strength vs v0" in table and "(outside system)" in table
    rows = table[table.index("<tbody>"):]
    assert rows.index("alpha") < rows.index("v0") < rows.index("beta")
    charts = json.loads(html[html.index('type="application/json">') + len('type="application/json">'):
                             html.index("</script>", html.index('id="chart-specs"'))])
    assert charts["bradley-terry"]["data"][0]["x"] == ["v0", "alpha", "beta"]


def test_without_the_base_the_first_system_is_the_anchor(base_run, people):
    services.import_external_completions(base_run, "s.jsonl", two_systems(2))
    for comparison in Comparison.objects.all():
        label(comparison, people.annotator, "beta")
    ranking = run_ranking(base_run)
    assert ranking.anchor == "alpha"
    assert [s.player for s in ranking.strengths] == ["beta", "alpha"]


def test_systems_no_judgement_links_to_the_anchor_are_left_off_its_scale(arena, people):
    """gamma and delta were only ever compared with each other: the prior alone would
    place them on v0's scale, so they are named apart instead."""
    services.import_external_completions(arena, "other.jsonl", jsonl(
        *({"prompt": f"Other {i}?", "answers": {"gamma": f"g{i}", "delta": f"d{i}"}} for i in range(3))))
    for comparison in pairs_of("gamma", "delta"):
        label(comparison, people.annotator, "gamma")
    ranking = run_ranking(arena)
    assert [s.player for s in ranking.strengths] == ["alpha", "v0", "beta"]
    assert ranking.unlinked == ["delta", "gamma"] and ranking.games == 12


# Plotly reads <a href> and <b> in labels; the page must show all of it as text.
HOSTILE_NAME = '<a href="javascript:alert(1)"><b>boss</b></a><img src=x onerror="alert(1)">'
HOSTILE_ANSWER = "<script>alert('answer')</script> **bold**"


def test_hostile_system_names_and_answers_render_inert(client, people, base_run):
    services.import_external_completions(base_run, "s.jsonl", jsonl(
        {"prompt": "Hi?", "answers": {HOSTILE_NAME: HOSTILE_ANSWER, "plain": "hello"}}))
    comparison = Comparison.objects.get()
    label(comparison, people.annotator, HOSTILE_NAME)
    payload = json.dumps(comparison_for_annotator(comparison))
    assert "<script>" not in payload and "onerror" not in payload and "<strong>bold</strong>" in payload
    client.force_login(people.researcher)
    html = client.get(reverse("progress"), {"run": base_run.pk}).content.decode()
    assert "<img src=x" not in html and "<b>boss" not in html
    assert escape(HOSTILE_NAME) in html  # the table shows it as text
    start = html.index('type="application/json">') + len('type="application/json">')
    charts = json.loads(html[start:html.index("</script>", start)])
    assert charts["bradley-terry"]["data"][0]["x"][0].startswith("&lt;a href=")  # Plotly shows entities as text
    assert run_ranking(base_run).strengths[0].player == HOSTILE_NAME


def test_the_run_page_imports_for_staff_and_names_the_bad_line(client, people, base_run):
    url = reverse("import_completions", args=[base_run.pk])
    client.force_login(people.researcher)
    page = client.get(reverse("run_detail", args=[base_run.pk]))
    assert b'id="import-completions"' in page.content
    response = client.post(url, {"file": SimpleUploadedFile("s.jsonl", two_systems(2)), "against_version": ""},
                           follow=True)
    assert b"queued 2 comparisons" in response.content
    bad = jsonl({"prompt": "ok", "answers": {"a": "1", "b": "2"}}, {"prompt": "x", "answers": {"a": ""}})
    response = client.post(url, {"file": SimpleUploadedFile("bad.jsonl", bad)}, follow=True)
    assert b"Nothing was imported: line 2: the answer of &#x27;a&#x27; is empty" in response.content
    assert Comparison.objects.count() == 2


def test_only_staff_may_import(client, people, base_run):
    url = reverse("import_completions", args=[base_run.pk])
    response = client.post(url, {"file": SimpleUploadedFile("s.jsonl", two_systems(1))})
    assert response.status_code == 302 and "login" in response["Location"]
    client.force_login(people.annotator)
    response = client.post(url, {"file": SimpleUploadedFile("s.jsonl", two_systems(1))})
    assert response.status_code == 403
    assert stored_counts() == (0, 0, 0)


def test_management_command_imports_and_refuses(base_run, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_bytes(two_systems(2))
    call_command("import_completions", str(good), "--run", "default")
    assert Comparison.objects.count() == 2
    with pytest.raises(CommandError, match="no run called 'nope'"):
        call_command("import_completions", str(good), "--run", "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl({"prompt": "new one", "answers": {"a": "1", "b": "2"}}, "oops"))
    with pytest.raises(CommandError, match="line 2: invalid JSON"):
        call_command("import_completions", str(bad), "--run", "default")
    with pytest.raises(CommandError, match="no policy version 99"):
        call_command("import_completions", str(good), "--run", "default", "--against-version", "99")
    assert stored_counts() == (2, 4, 2)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_chromium_a_hostile_system_name_is_shown_as_text_and_runs_nothing(live_server, people, base_run):
    from playwright.sync_api import sync_playwright

    from tests.test_label_browser import CHROMIUM_ARGS

    services.import_external_completions(base_run, "s.jsonl", jsonl(
        {"prompt": "Hi?", "answers": {HOSTILE_NAME: HOSTILE_ANSWER, "plain": "hello"}}))
    label(Comparison.objects.get(), people.annotator, HOSTILE_NAME)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = chromium.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{live_server.url}/progress/?run={base_run.pk}")
        page.fill("input[name=username]", "rita")
        page.fill("input[name=password]", "pw-rita-123")
        page.press("input[name=password]", "Enter")
        page.wait_for_selector("#chart-bradley-terry .xtick text")
        ticks = page.locator("#chart-bradley-terry .xtick text").all_text_contents()
        table = page.locator(f"#ranking-{base_run.pk}").inner_text()
        images = page.locator("img[src=x]").count()
        chromium.close()
    assert HOSTILE_NAME in ticks and HOSTILE_NAME in table
    assert images == 0 and dialogs == []
