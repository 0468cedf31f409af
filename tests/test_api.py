"""The REST API (api/): tokens on every route, each endpoint doing its job, the OpenAPI
schema and the docs page."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from api.models import ApiToken
from api.services import create_token
from api.v1 import api
from labeling import services as labeling
from labeling.models import Comparison, Label, Prompt
from labeling.services import LabelInput
from training import services
from training.models import Job

pytestmark = pytest.mark.django_db

PREFIX = "/api/v1"
SCHEMA = api.get_openapi_schema()
ROUTES = [(method, path, op) for path, ops in SCHEMA["paths"].items() for method, op in ops.items()]
# Where annotators' tokens may go; everything else is for researchers. A new route for
# annotators has to be added here on purpose.
ANNOTATOR_ROUTES = {("post", "/api/v1/labels/next"), ("post", "/api/v1/labels"), ("post", "/api/v1/labels/undo")}


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def keys(people, django_user_model):
    """A key of each kind: staff, annotator, revoked (of staff), of a disabled person."""
    revoked, revoked_key = create_token(people.researcher, "old")
    revoked.revoke()
    disabled = django_user_model.objects.create_user("gone", is_staff=True, is_active=False)
    return SimpleNamespace(
        staff=create_token(people.researcher, "pipeline")[1],
        annotator=create_token(people.annotator, "labeling script")[1],
        revoked=revoked_key,
        disabled=create_token(disabled, "left")[1],
    )


def call(client, method: str, path: str, headers: dict, **kwargs):
    url = re.sub(r"\{[a-z_]+\}", "999999", path)
    if method == "post":
        return client.post(url, "{}", content_type="application/json", **headers, **kwargs)
    return getattr(client, method)(url, **headers, **kwargs)


def route_id(route) -> str:
    return f"{route[0].upper()} {route[1]}"


def test_every_route_declares_one_audience():
    assert len(ROUTES) >= 11
    audiences = {(m, p): op.get("security") for m, p, op in ROUTES}
    assert all(s in ([{"PersonToken": []}], [{"StaffToken": []}]) for s in audiences.values()), audiences
    assert {r for r, s in audiences.items() if s == [{"PersonToken": []}]} == ANNOTATOR_ROUTES


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
@pytest.mark.parametrize("who", ["none", "wrong", "revoked", "disabled", "not bearer", "session only"])
def test_unusable_credentials_get_401_everywhere(client, keys, people, route, who):
    method, path, _ = route
    headers = {
        "none": {}, "wrong": bearer("plk_" + "x" * 43), "revoked": bearer(keys.revoked),
        "disabled": bearer(keys.disabled), "not bearer": {"HTTP_AUTHORIZATION": f"Token {keys.staff}"},
        "session only": {},
    }[who]
    if who == "session only":  # a signed-in browser is no API client: no token, no access
        client.force_login(people.researcher)
    response = call(client, method, path, headers)
    assert response.status_code == 401, response.content[:300]
    assert "API token" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_annotator_tokens_reach_the_labels_only(client, keys, route, base_run):
    method, path, _ = route
    response = call(client, method, path, bearer(keys.annotator))
    if (method, path) in ANNOTATOR_ROUTES:
        assert response.status_code not in (401, 403), response.content[:300]
    else:
        assert response.status_code == 403, response.content[:300]
        assert "staff" in response.json()["error"]


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_staff_tokens_reach_every_route(client, keys, route, base_run):
    method, path, _ = route
    response = call(client, method, path, bearer(keys.staff))
    # 404 (ids that do not exist) or 422 (an empty body) are the endpoint's own answers.
    assert response.status_code in (200, 201, 400, 404, 409, 422), response.content[:300]
    if response.status_code >= 400:
        assert response.json()["error"]


def test_last_use_is_recorded(client, keys):
    client.get(f"{PREFIX}/runs", **bearer(keys.staff))
    assert ApiToken.objects.get(name="pipeline").last_used_at is not None
    assert ApiToken.objects.get(name="labeling script").last_used_at is None


# --- labels


def test_fetch_and_submit_a_label_stored_once_when_submitted_twice(client, keys, people, make_comparison):
    comparison = make_comparison(texts=("<script>alert(1)</script>", "plain"), prompt="Which is better?")
    served = client.post(f"{PREFIX}/labels/next", **bearer(keys.annotator)).json()
    assert served["comparison"]["id"] == comparison.pk
    assert served["comparison"]["messages"] == [{"role": "user", "content": "Which is better?"}]
    # Raw text in JSON for scripts; nothing about which policy wrote which completion.
    assert sorted(c["text"] for c in served["comparison"]["completions"]) == ["<script>alert(1)</script>", "plain"]
    assert set(served["comparison"]["completions"][0]) == {"position", "text"}
    assert "version" not in json.dumps(served) and "policy" not in json.dumps(served)
    body = json.dumps({"comparison_id": comparison.pk, "choice": "b", "strength": 2, "active_seconds": 3.5})
    first = client.post(f"{PREFIX}/labels", body, content_type="application/json", **bearer(keys.annotator))
    second = client.post(f"{PREFIX}/labels", body, content_type="application/json", **bearer(keys.annotator))
    assert first.status_code == second.status_code == 200
    assert first.json()["duplicate"] is False
    assert second.json() == {"label_id": first.json()["label_id"], "duplicate": True}
    label = Label.objects.get()
    assert (label.annotator, label.choice, label.strength, label.active_seconds) == (people.annotator, "b", 2, 3.5)


def test_a_label_without_a_lease_is_refused_with_409(client, keys, make_comparison):
    comparison = make_comparison()
    response = client.post(f"{PREFIX}/labels", {"comparison_id": comparison.pk, "choice": "a"},
                           content_type="application/json", **bearer(keys.annotator))
    assert response.status_code == 409 and "not given to you" in response.json()["error"]


@pytest.mark.parametrize("body", [
    '{"comparison_id": %d, "choice": "a", "active_seconds": NaN}',
    '{"comparison_id": %d, "choice": "a", "rationale": "nul \\u0000 inside"}',
    '{"comparison_id": %d}',
    '{"comparison_id": %d, "choice": "a", "rationale": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "not json",
])
def test_malformed_labels_are_refused_and_store_nothing(client, keys, make_comparison, body):
    comparison = make_comparison()
    client.post(f"{PREFIX}/labels/next", **bearer(keys.annotator))
    response = client.post(f"{PREFIX}/labels", body.replace("%d", str(comparison.pk)),
                           content_type="application/json", **bearer(keys.annotator))
    assert response.status_code in (400, 422), response.content[:200]
    assert response.json()["error"]
    assert not Label.objects.exists()


def test_a_choice_the_comparison_cannot_take_is_a_400(client, keys, make_comparison):
    comparison = make_comparison()
    client.post(f"{PREFIX}/labels/next", **bearer(keys.annotator))
    response = client.post(f"{PREFIX}/labels", {"comparison_id": comparison.pk, "choice": "ranking"},
                           content_type="application/json", **bearer(keys.annotator))
    assert response.status_code == 400 and "not valid" in response.json()["error"]


def test_undo_gives_the_comparison_back(client, keys, make_comparison):
    comparison = make_comparison()
    client.post(f"{PREFIX}/labels/next", **bearer(keys.annotator))
    client.post(f"{PREFIX}/labels", {"comparison_id": comparison.pk, "choice": "a"},
                content_type="application/json", **bearer(keys.annotator))
    undone = client.post(f"{PREFIX}/labels/undo", **bearer(keys.annotator)).json()
    assert undone["undone"] is True and undone["comparison"]["id"] == comparison.pk
    assert not Label.objects.exists()
    refused = client.post(f"{PREFIX}/labels/undo", **bearer(keys.annotator))
    assert refused.status_code == 409 and "took back" in refused.json()["error"]


# --- prompts


def upload(client, key, name: str, data: bytes):
    return client.post(f"{PREFIX}/prompts/import", {"file": SimpleUploadedFile(name, data)}, **bearer(key))


def test_import_prompts_all_or_nothing_with_the_error_line(client, keys):
    good = b'{"prompt": "one"}\n{"messages": [{"role": "user", "content": "two"}], "category": "chat"}\n'
    response = upload(client, keys.staff, "prompts.jsonl", good)
    assert response.status_code == 200 and response.json() == {"created": 2, "duplicates": 0}
    assert upload(client, keys.staff, "again.jsonl", good).json() == {"created": 0, "duplicates": 2}
    bad = b'{"prompt": "three"}\n{"prompt": ""}\n{"prompt": "four"}\n'
    refused = upload(client, keys.staff, "bad.jsonl", bad)
    assert refused.status_code == 400
    assert refused.json()["error"] == "Nothing was imported: line 2: empty prompt"
    assert Prompt.objects.count() == 2


def test_import_prompts_from_csv_and_size_limit(client, keys, settings):
    assert upload(client, keys.staff, "p.csv", b"prompt,category\nhello,greet\n").json()["created"] == 1
    settings.PREFLOOP_MAX_IMPORT_BYTES = 10
    refused = upload(client, keys.staff, "big.jsonl", b'{"prompt": "far too long"}\n')
    assert refused.status_code == 400 and "limit" in refused.json()["error"]


# --- exports


def test_export_preferences_and_labels_stream_jsonl(client, keys, people, make_comparison):
    for choice in ("a", "tie"):
        labeling.submit_label(people.annotator, LabelInput(make_comparison(texts=("good", "bad")).pk, choice),
                              require_lease=False)
    response = client.get(f"{PREFIX}/exports/preferences", **bearer(keys.staff))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("application/jsonl")
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(rows) == 1 and set(rows[0]) >= {"prompt", "chosen", "rejected"}  # the tie states no preference
    assert (rows[0]["run"], rows[0]["chosen_ended"]) == ("default", True)  # the only run: no need to name it
    raw = client.get(f"{PREFIX}/exports/labels", **bearer(keys.staff))
    labels = [json.loads(line) for line in b"".join(raw.streaming_content).decode().splitlines()]
    assert [label["choice"] for label in labels] == ["a", "tie"]
    assert labels[0]["annotator"] == "ann"


def test_exports_are_of_the_named_run_and_of_every_run_only_when_asked(client, keys, people, make_comparison,
                                                                        base_run):
    other = services.create_run("second", base_run.base_model_dir)
    for run in (base_run, other):
        comparison = make_comparison(texts=(f"{run.name} good", f"{run.name} bad"))
        Comparison.objects.filter(pk=comparison.pk).update(run=run)
        labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)

    def rows(path: str, **query) -> list[dict]:
        response = client.get(f"{PREFIX}/exports/{path}", query, **bearer(keys.staff))
        assert response.status_code == 200, response.content
        return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]

    assert [(r["run"], r["run_id"]) for r in rows("preferences", run="second")] == [("second", other.pk)]
    assert [r["run"] for r in rows("preferences", run=str(base_run.pk))] == ["default"]
    assert [r["run"] for r in rows("labels", run="second")] == ["second"]
    assert [r["run"] for r in rows("preferences", run="all")] == ["default", "second"]
    for path in ("preferences", "labels"):
        refused = client.get(f"{PREFIX}/exports/{path}", **bearer(keys.staff))
        assert refused.status_code == 400 and "default (id" in refused.json()["error"]
        assert "second (id" in refused.json()["error"] and "'all'" in refused.json()["error"]
        unknown = client.get(f"{PREFIX}/exports/{path}", {"run": "nope"}, **bearer(keys.staff))
        assert unknown.status_code == 400 and "no run 'nope'" in unknown.json()["error"]


# --- runs, rounds, jobs


def test_create_run(client, keys, base_run, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    body = {"name": "second", "base_model_dir": str(model_dir), "method": "dpo", "description": "from a script"}
    response = client.post(f"{PREFIX}/runs", body, content_type="application/json", **bearer(keys.staff))
    assert response.status_code == 201, response.content
    run = response.json()
    assert (run["name"], run["method"], run["head"] is not None) == ("second", "dpo", True)
    assert run["precision"] == "auto"  # the deployment's
    assert run["recipe"] == "direct"  # DPO reads no reward model: its rounds train none
    exact = client.post(f"{PREFIX}/runs", {**body, "name": "exact", "precision": "fp32",
                                           "gradient_checkpointing": "on"},
                        content_type="application/json", **bearer(keys.staff))
    assert exact.status_code == 201
    assert (exact.json()["precision"], exact.json()["gradient_checkpointing"]) == ("fp32", "on")
    assert client.post(f"{PREFIX}/runs", {**body, "name": "half", "precision": "half"},
                       content_type="application/json", **bearer(keys.staff)).status_code == 422
    assert [r["name"] for r in client.get(f"{PREFIX}/runs", **bearer(keys.staff)).json()] == ["default", "second",
                                                                                            "exact"]
    again = client.post(f"{PREFIX}/runs", body, content_type="application/json", **bearer(keys.staff))
    assert again.status_code == 400 and "already a run" in again.json()["error"]
    nowhere = client.post(f"{PREFIX}/runs", {**body, "name": "third", "base_model_dir": str(tmp_path / "none")},
                          content_type="application/json", **bearer(keys.staff))
    assert nowhere.status_code == 422 and "not a Hugging Face model directory" in nowhere.json()["error"]
    unknown = client.post(f"{PREFIX}/runs", {**body, "name": "fourth", "method": "magic"},
                          content_type="application/json", **bearer(keys.staff))
    assert unknown.status_code == 422 and "unknown method" in unknown.json()["error"]
    nul = client.post(f"{PREFIX}/runs", {**body, "name": "fifth", "description": "a\x00b"},
                      content_type="application/json", **bearer(keys.staff))
    assert nul.status_code == 422 and "NUL" in nul.json()["error"]


def test_start_a_round_then_poll_its_job_and_the_round(client, keys, people, base_run, make_comparison):
    url = f"{PREFIX}/runs/{base_run.pk}/rounds"
    refused = client.post(url, {}, content_type="application/json", **bearer(keys.staff))
    assert refused.status_code == 400 and "no labels with a preference" in refused.json()["error"]
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    response = client.post(url, {"recipe": "rlhf"}, content_type="application/json", **bearer(keys.staff))
    assert response.status_code == 201, response.content
    round_ = response.json()
    assert (round_["status"], round_["stage"], round_["recipe"]) == ("running", "reward_model", "rlhf")
    job = client.get(f"{PREFIX}/jobs/{round_['job_ids'][-1]}", **bearer(keys.staff)).json()
    assert (job["kind"], job["status"], job["round_number"], job["progress"]) == ("train_reward", "pending",
                                                                                   round_["number"], 0.0)
    again = client.post(url, {}, content_type="application/json", **bearer(keys.staff))
    assert again.status_code == 400 and "still running" in again.json()["error"]
    read = client.get(f"{PREFIX}/rounds/{round_['number']}", **bearer(keys.staff)).json()
    assert read["job_ids"] == round_["job_ids"] and read["policy_before"] == 0
    bad_recipe = client.post(url, {"recipe": "magic"}, content_type="application/json", **bearer(keys.staff))
    assert bad_recipe.status_code == 422 and "unknown recipe" in bad_recipe.json()["error"]


def test_job_status(client, keys, base_run):
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, status=Job.Status.FAILED, step=3, total_steps=4,
                             error="out of memory")
    body = client.get(f"{PREFIX}/jobs/{job.pk}", **bearer(keys.staff)).json()
    assert (body["status"], body["progress"], body["error"], body["round_number"]) == ("failed", 0.75,
                                                                                       "out of memory", None)
    missing = client.get(f"{PREFIX}/jobs/999999", **bearer(keys.staff))
    assert missing.status_code == 404 and missing.json() == {"error": "not found"}


def test_cancel_a_job(client, keys, base_run):
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run)
    assert client.get(f"{PREFIX}/jobs/{job.pk}", **bearer(keys.staff)).json()["can_be_cancelled"] is True
    body = client.post(f"{PREFIX}/jobs/{job.pk}/cancel", **bearer(keys.staff)).json()
    assert (body["status"], body["can_be_cancelled"]) == ("cancelled", False)
    assert body["error"].startswith("cancelled by ") and body["error"].endswith(" before it started")
    again = client.post(f"{PREFIX}/jobs/{job.pk}/cancel", **bearer(keys.staff))
    assert again.status_code == 400 and "has already finished (cancelled)" in again.json()["error"]
    running = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, status=Job.Status.RUNNING, attempts=1)
    body = client.post(f"{PREFIX}/jobs/{running.pk}/cancel", **bearer(keys.staff)).json()
    assert body["status"] == "running" and body["status_text"].startswith("stopping: cancelled by ")
    assert client.post(f"{PREFIX}/jobs/{running.pk}/cancel", **bearer(keys.annotator)).status_code == 403


# --- schema and docs


def test_the_openapi_schema_validates(client, people):
    from openapi_spec_validator import validate

    client.force_login(people.annotator)
    response = client.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    validate(response.json())
    assert {"PersonToken", "StaffToken"} <= set(response.json()["components"]["securitySchemes"])


def test_docs_need_login_and_load_nothing_from_other_hosts(client, people):
    from django.contrib.staticfiles import finders

    for url in (f"{PREFIX}/docs", f"{PREFIX}/openapi.json"):
        anonymous = client.get(url)
        assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    client.force_login(people.annotator)
    html = client.get(f"{PREFIX}/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html and "/static/ninja/swagger-ui.css" in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), "the docs page loads from another host"
    assert '"validatorUrl": null' in html  # Swagger UI would otherwise send the schema to validator.swagger.io
    assert finders.find("ninja/swagger-ui-bundle.js") and finders.find("ninja/swagger-ui-init.js")


# --- the token page and the admin


def test_a_person_makes_a_token_sees_its_key_once_and_revokes_it(client, people, make_comparison):
    client.force_login(people.annotator)
    assert client.get(reverse("api_tokens")).status_code == 200
    made = client.post(reverse("api_tokens"), {"name": "my script"})
    assert made["Cache-Control"] == "no-store"
    key = re.search(r'<pre id="new-key">(plk_[\w-]+)</pre>', made.content.decode()).group(1)
    token = ApiToken.objects.get(user=people.annotator)
    assert token.key_hash != key and key not in token.key_hash and key.startswith(token.prefix)
    assert key not in client.get(reverse("api_tokens")).content.decode()  # shown once
    assert client.post(f"{PREFIX}/labels/next", **bearer(key)).status_code == 200
    client.post(reverse("api_token_revoke", args=[token.pk]))
    assert client.post(f"{PREFIX}/labels/next", **bearer(key)).status_code == 401


def test_nobody_revokes_someone_elses_token_on_the_page(client, people):
    token, key = create_token(people.researcher, "mine")
    client.force_login(people.annotator)
    client.post(reverse("api_token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is None


def test_token_page_needs_login_and_a_name(client, people):
    assert client.get(reverse("api_tokens")).status_code == 302
    client.force_login(people.annotator)
    assert client.post(reverse("api_tokens"), {"name": " "}).status_code == 400
    assert not ApiToken.objects.exists()


def test_staff_revoke_tokens_in_the_admin(client, people):
    token, key = create_token(people.annotator, "laptop")
    people.researcher.is_superuser = True
    people.researcher.save()
    client.force_login(people.researcher)
    changelist = reverse("admin:api_apitoken_changelist")
    assert "laptop" in client.get(changelist).content.decode()
    client.post(changelist, {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert client.post(f"{PREFIX}/labels/next", **bearer(key)).status_code == 401


def test_import_a_dataset_poll_its_job_train_a_run_on_it_and_download_it(client, keys, base_run, settings, tmp_path):
    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    from labeling.models import PreferenceDataset
    from training import services
    from training.models import RunDataset

    rows = [{"prompt": "Colour?", "chosen": "Teal.", "rejected": "No.", "score_chosen": 9, "score_rejected": 2},
            {"prompt": "Sum?", "chosen": "Four.", "rejected": "Five.", "score_chosen": 8, "score_rejected": 7}]
    file = SimpleUploadedFile("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    response = client.post(f"{PREFIX}/datasets", {"name": "uf", "file": file}, **bearer(keys.staff))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["dataset"]["status"] == "importing"
    services.run_job_now(Job.objects.get(pk=body["job_id"]))
    assert client.get(f"{PREFIX}/jobs/{body['job_id']}", **bearer(keys.staff)).json()["status"] == "succeeded"
    dataset = client.get(f"{PREFIX}/datasets/{body['dataset']['id']}", **bearer(keys.staff)).json()
    assert (dataset["status"], dataset["pair_count"], dataset["formats"]) == ("ready", 2, ["standard"])

    response = client.put(f"{PREFIX}/datasets/{dataset['id']}/runs/{base_run.pk}", {"weight": 0.5},
                          content_type="application/json", **bearer(keys.staff))
    assert response.status_code == 200 and response.json()["weight"] == 0.5
    assert RunDataset.objects.get().for_methods
    assert client.put(f"{PREFIX}/datasets/{dataset['id']}/runs/{base_run.pk}", {"weight": 20},
                      content_type="application/json", **bearer(keys.staff)).status_code == 422

    download = client.get(f"{PREFIX}/datasets/{dataset['id']}/pairs?format=standard", **bearer(keys.staff))
    assert [json.loads(line) for line in b"".join(download.streaming_content).decode().splitlines()] == [
        {**r, "score_chosen": float(r["score_chosen"]), "score_rejected": float(r["score_rejected"])} for r in rows]
    assert client.get(f"{PREFIX}/datasets/{dataset['id']}/pairs?format=csv",
                      **bearer(keys.staff)).status_code == 400
    assert client.delete(f"{PREFIX}/datasets/{dataset['id']}/runs/{base_run.pk}",
                         **bearer(keys.staff)).status_code == 204
    assert not RunDataset.objects.exists()

    bad = SimpleUploadedFile("bad.jsonl", b'{"prompt": "x", "chosen": "a", "rejected": "b"}\n{"chosen": 1}\n')
    body = client.post(f"{PREFIX}/datasets", {"name": "bad", "file": bad}, **bearer(keys.staff)).json()
    services.run_job_now(Job.objects.get(pk=body["job_id"]))
    failed = client.get(f"{PREFIX}/datasets/{body['dataset']['id']}", **bearer(keys.staff)).json()
    assert failed["status"] == "failed" and failed["error"].startswith("line 2: missing field 'rejected'")
    assert PreferenceDataset.objects.get(name="bad").pairs.count() == 0
    taken = client.post(f"{PREFIX}/datasets", {"name": "uf", "file": SimpleUploadedFile("x.jsonl", b"{}")},
                        **bearer(keys.staff))
    assert taken.status_code == 400 and "already exists" in taken.json()["error"]


def test_import_outside_systems_answers_as_comparisons(client, keys, base_run):
    from labeling.models import Comparison

    lines = [{"prompt": f"Question {i}?", "answers": {"model-a": f"A{i}", "model-b": f"B{i}", "model-c": f"C{i}"}}
             for i in range(2)]
    file = SimpleUploadedFile("answers.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
    response = client.post(f"{PREFIX}/runs/{base_run.pk}/completions", {"file": file}, **bearer(keys.staff))
    assert response.status_code == 201, response.content
    assert response.json()["comparisons_created"] == 6 == Comparison.objects.filter(run=base_run).count()
    bad = SimpleUploadedFile("bad.jsonl", b'{"prompt": "x", "answers": {"only-one": "a"}}\n')
    response = client.post(f"{PREFIX}/runs/{base_run.pk}/completions", {"file": bad}, **bearer(keys.staff))
    assert response.status_code == 400 and "line 1" in response.json()["error"]
    assert Comparison.objects.count() == 6
