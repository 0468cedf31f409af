"""Labeling guidelines per run (issue 11, item 5): staff write them in Markdown on the
run page; annotators get them, sanitized like model output, with the name of the run
each comparison is for (in chromium: tests/test_label_browser.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from training.services.runs import GUIDELINES_MAX_CHARS

pytestmark = pytest.mark.django_db


def test_staff_save_guidelines_that_render_as_markdown_and_never_as_html(client, people, base_run):
    client.force_login(people.researcher)
    text = "# Rules\r\n\r\nPrefer **honest** answers.\r\n\r\n<script>alert(1)</script>"

    response = client.post(reverse("save_guidelines", args=[base_run.pk]), {"guidelines": text}, follow=True)

    base_run.refresh_from_db()
    assert base_run.guidelines == "# Rules\n\nPrefer **honest** answers.\n\n<script>alert(1)</script>"
    page = response.content.decode()
    assert "Guidelines of default saved" in page
    assert "<strong>honest</strong>" in page and "<script>alert(1)" not in page


@pytest.mark.parametrize(("text", "message"), [
    ("a\x00b", "Null characters are not allowed"),
    ("x" * (GUIDELINES_MAX_CHARS + 1), "the limit is 20,000"),
])
def test_guidelines_that_cannot_be_stored_are_refused_and_the_old_ones_kept(client, people, base_run, text, message):
    base_run.guidelines = "Keep me."
    base_run.save()
    client.force_login(people.researcher)
    response = client.post(reverse("save_guidelines", args=[base_run.pk]), {"guidelines": text}, follow=True)
    assert message in response.content.decode()
    base_run.refresh_from_db()
    assert base_run.guidelines == "Keep me."


def test_annotators_cannot_change_guidelines(client, people, base_run):
    client.force_login(people.annotator)
    assert client.post(reverse("save_guidelines", args=[base_run.pk]), {"guidelines": "mine"}).status_code == 403
    base_run.refresh_from_db()
    assert base_run.guidelines == ""


def test_each_comparison_says_its_run_and_carries_its_guidelines(client, people, base_run, make_comparison):
    base_run.guidelines = "Answer *briefly*. <img src=x onerror=alert(1)>"
    base_run.save()
    make_comparison()
    client.force_login(people.annotator)

    served = client.post(reverse("label_next")).json()["comparison"]

    assert served["run"]["name"] == "default"
    html = served["run"]["guidelines_html"]
    assert "<em>briefly</em>" in html and "<img" not in html


def test_the_service_refuses_nul_for_callers_without_a_form(base_run):
    from training.services import RunError, set_guidelines

    with pytest.raises(RunError, match="NUL"):
        set_guidelines(base_run, "a\x00b")
