from __future__ import annotations

import json

import pytest
from django.urls import reverse

from labeling import services
from labeling.models import Label
from labeling.services import LabelInput

pytestmark = pytest.mark.django_db

STAFF_ONLY = [
    ("get", "/admin/"),
    ("get", "/admin/labeling/label/"),
    ("get", "/prompts/import/"),
    ("post", "/prompts/import/"),
    ("get", "/export/labels.jsonl"),
    ("get", "/export/labels.jsonl?raw=1"),
    ("get", "/researcher/"),
    ("post", "/runs/new"),
    ("get", "/runs/1/"),
    ("post", "/runs/1/"),
    ("post", "/runs/1/rounds"),
    ("post", "/runs/1/generate"),
    ("post", "/runs/1/train-reward-model"),
    ("post", "/runs/1/pause"),
    ("post", "/runs/1/guidelines"),
    ("post", "/runs/1/evaluate"),
    ("post", "/runs/1/bakeoffs"),
    ("get", "/bakeoffs/1/"),
    ("post", "/bakeoffs/candidates/1/promote"),
    ("post", "/loop/resume"),
    ("get", "/jobs/1.json"),
    ("post", "/jobs/1/cancel"),
    ("get", "/progress/"),
    ("get", "/progress/rounds/1/"),
    ("get", "/progress/versions/0/"),
    ("post", "/progress/versions/0/branch"),
    ("get", "/progress/versions/0/download?format=merged"),
    ("get", "/progress/workers.json"),
]
EVERY_PAGE = STAFF_ONLY[2:] + [("get", "/label/"), ("post", "/label/api/next"), ("post", "/label/api/undo"),
                               ("get", "/me/")]


@pytest.mark.parametrize(("method", "url"), STAFF_ONLY)
def test_annotators_get_403_on_staff_pages(client, people, method, url):
    client.force_login(people.annotator)
    assert getattr(client, method)(url).status_code == 403


@pytest.mark.parametrize(("method", "url"), EVERY_PAGE)
def test_every_page_needs_login(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_researcher_reaches_staff_pages(client, people, base_policy):
    client.force_login(people.researcher)
    for url in ("/admin/", "/prompts/import/", "/researcher/", "/export/labels.jsonl",
                f"/runs/{base_policy.run_id}/", "/progress/", "/progress/versions/0/"):
        assert client.get(url).status_code == 200, url


def test_annotator_payload_hides_policy_versions_and_other_labels(client, people, make_comparison):
    comparison = make_comparison(labels_needed=2)
    services.next_comparison_for(people.outsider)
    services.submit_label(people.outsider, LabelInput(comparison.pk, "a", rationale="otto's secret reasoning"))
    client.force_login(people.annotator)
    body = client.post(reverse("label_next")).content.decode()
    payload = json.loads(body)
    assert payload["comparison"]["id"] == comparison.pk
    assert "policy" not in body and "version" not in body
    assert "otto" not in body and "secret reasoning" not in body
    assert set(payload["comparison"]["completions"][0]) == {"position", "html", "cut_off_at"}


def test_undo_only_touches_ones_own_labels(client, people, make_comparison):
    comparison = make_comparison()
    services.next_comparison_for(people.outsider)
    services.submit_label(people.outsider, LabelInput(comparison.pk, "a"))
    client.force_login(people.annotator)
    client.post(reverse("label_undo"), "{}", content_type="application/json")
    assert Label.objects.filter(annotator=people.outsider).count() == 1


def test_submit_api_stores_once_and_reports_duplicates(client, people, make_comparison):
    comparison = make_comparison()
    client.force_login(people.annotator)
    assert client.post(reverse("label_next")).json()["comparison"]["id"] == comparison.pk
    body = json.dumps({"comparison_id": comparison.pk, "choice": "b", "strength": 2, "active_seconds": 4.2})
    first = client.post(reverse("label_submit"), body, content_type="application/json").json()
    second = client.post(reverse("label_submit"), body, content_type="application/json").json()
    assert first["duplicate"] is False and second == {"label_id": first["label_id"], "duplicate": True}
    label = Label.objects.get()
    assert (label.choice, label.strength, label.active_seconds, label.annotator) == ("b", 2, 4.2, people.annotator)


@pytest.mark.parametrize("body", ["not json", '{"choice": "a"}', '{"comparison_id": "x", "choice": "a"}'])
def test_submit_api_rejects_malformed_bodies_with_400(client, people, body):
    client.force_login(people.annotator)
    response = client.post(reverse("label_submit"), body, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


def test_label_api_needs_the_csrf_token(people, make_comparison):
    from django.test import Client

    comparison = make_comparison()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(people.annotator)
    body = json.dumps({"comparison_id": comparison.pk, "choice": "a"})
    assert strict.post(reverse("label_submit"), body, content_type="application/json").status_code == 403
    assert not Label.objects.exists()


def test_pages_carry_a_content_security_policy_without_inline_scripts(client, people):
    client.force_login(people.researcher)
    for url in ("/label/", "/researcher/"):
        response = client.get(url)
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert b"<script>" not in response.content  # every script is a static file


def test_undo_says_when_there_is_nothing_to_undo(client, people):
    client.force_login(people.annotator)
    assert client.post(reverse("label_undo"), "{}", content_type="application/json").json()["undone"] is False


def test_train_reward_model_button_queues_one_job(client, people, base_run):
    from training.models import Job

    client.force_login(people.researcher)
    for _ in range(2):  # a double click
        response = client.post(reverse("train_reward_model", args=[base_run.pk]), follow=True)
    assert b"Reward-model training job" in response.content
    assert Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).count() == 1
