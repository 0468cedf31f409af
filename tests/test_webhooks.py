"""Webhooks (webhooks/): signed events from the real service paths, written in the
transaction of what happened and delivered to a real local receiver that is down for a
while, each once; the URLs a hook may have; staff-only pages and the API."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from api.services import create_token
from labeling import services as labeling
from labeling.services import LabelInput
from tests.conftest import _free_port
from tests.test_loop_rounds import finish, loop_world  # noqa: F401 (a fixture)
from tests.test_reward_model_training import marker_labels, rm_settings  # noqa: F401 (fixtures)
from training import services as training
from training.models import Job, PolicyVersion, RewardModelVersion, Round
from training.services import loop
from training.services.artifacts import publish_artifact
from webhooks import services, tasks
from webhooks.models import DeliveryAttempt, EventType, Webhook, WebhookDelivery, WebhookEvent
from webhooks.signing import verify_signature

pytestmark = pytest.mark.django_db


class Receiver:
    """A real HTTP server on a free loopback port, in a thread: `closed` (nothing listens:
    connection refused), `unavailable` (503) or `up` (200, and it keeps what it got)."""

    def __init__(self):
        self.port, self.server, self.thread = _free_port(), None, None
        self.state, self.received, self.refused = "closed", [], 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/prefloop"

    def set(self, state: str) -> None:
        if state != "closed" and self.server is None:
            receiver = self

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self):  # noqa: N802 (http.server's name)
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                    if receiver.state == "unavailable":
                        receiver.refused += 1
                        self.send_response(503)
                        self.end_headers()
                        self.wfile.write(b"down for maintenance")
                        return
                    receiver.received.append(SimpleNamespace(headers=dict(self.headers), body=body, path=self.path))
                    self.send_response(200)
                    self.end_headers()

                def log_message(self, *args):
                    pass

            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()
        if state == "closed" and self.server is not None:
            self.close()
        self.state = state

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def event_ids(self) -> list[str]:
        return [r.headers["X-PrefLoop-Event-Id"] for r in self.received]


@pytest.fixture
def receiver(settings):
    settings.PREFLOOP_WEBHOOK_ALLOW_LOOPBACK = True
    settings.PREFLOOP_WEBHOOK_TIMEOUT_SECONDS = 5
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def sent(monkeypatch):
    """The messages sent to the broker (the app's send_task), instead of a redis here."""
    from prefloop.celery import app

    messages = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, queue=None, countdown=None, **kw:
                        messages.append(SimpleNamespace(name=name, args=args, queue=queue, countdown=countdown)))
    return messages


def hook_for(people, url: str, events, run=None, every_labels: int = 0) -> tuple[Webhook, str]:
    return services.create_webhook(people.researcher, "ci", url, [str(e) for e in events], run, every_labels)


def deliver_due(now) -> int:
    """What the Celery tasks do as each delivery falls due: one attempt each."""
    due = list(services.due_deliveries(now).values_list("pk", flat=True))
    for delivery_id in due:
        services.attempt_delivery(delivery_id, now=now)
    return len(due)


def test_a_signature_verifies_and_a_changed_body_an_other_secret_or_an_old_timestamp_does_not():
    from webhooks.signing import signature

    body, now = b'{"id":"e1","type":"job.failed"}', 1_700_000_000
    signed = signature("s3cret", now, body)
    assert signed.startswith("sha256=") and len(signed) == len("sha256=") + 64
    assert verify_signature("s3cret", body, str(now), signed, now=now + 10)
    assert not verify_signature("s3cret", body + b" ", str(now), signed, now=now)
    assert not verify_signature("other", body, str(now), signed, now=now)
    assert not verify_signature("s3cret", body, str(now + 1), signed, now=now)  # the timestamp is signed too
    assert not verify_signature("s3cret", body, str(now), signed, now=now + 301)  # a replay, later
    assert not verify_signature("s3cret", body, "not a number", signed, now=now)


def test_a_receiver_down_for_ten_minutes_gets_every_event_exactly_once(receiver, people, base_run, sent):
    """Closed for five minutes, then 503 for five: with the default retry settings every
    event arrives once the receiver is back, each once, signed with the hook's secret."""
    hook, secret = hook_for(people, receiver.url, [EventType.JOB_FAILED])
    for number in range(3):  # three jobs failing, each announced twice (a redelivered task)
        job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run)
        job.mark_failed(f"RuntimeError: failure {number}")
        training.announce_finished(job)
        training.announce_finished(job)
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 3

    start = timezone.now()
    for second in range(0, 30 * 60, 5):  # half an hour in five-second steps
        receiver.set("closed" if second < 300 else "unavailable" if second < 600 else "up")
        deliver_due(start + timedelta(seconds=second))

    events = set(WebhookEvent.objects.values_list("id", flat=True))
    assert sorted(receiver.event_ids()) == sorted(str(e) for e in events) and len(events) == 3
    assert receiver.refused > 0  # the 503s were real answers
    for request in receiver.received:
        assert verify_signature(secret, request.body, request.headers["X-PrefLoop-Timestamp"],
                                request.headers["X-PrefLoop-Signature"])
        payload = json.loads(request.body)
        assert payload["type"] == "job.failed" == request.headers["X-PrefLoop-Event"]
        assert payload["id"] == request.headers["X-PrefLoop-Event-Id"]
        assert payload["data"]["run"]["name"] == base_run.name and "failure" in payload["data"]["job"]["error"]
        assert request.path == "/hooks/prefloop"
    # Attempts at 0, 15, 45, 105, 225, 465 s failed (refused, then 503), the one at 945 s arrived.
    deliveries = list(WebhookDelivery.objects.filter(webhook=hook))
    assert {(d.status, d.attempts, d.last_status_code) for d in deliveries} == {("delivered", 7, 200)}
    log = DeliveryAttempt.objects.filter(delivery=deliveries[0]).order_by("at")
    assert [a.status_code for a in log] == [None, None, None, None, None, 503, 200]
    assert "Connection refused" in log[0].error or "ConnectionRefused" in log[0].error
    assert "503" in log[5].error
    assert [round((a.at - start).total_seconds()) for a in log] == [0, 15, 45, 105, 225, 465, 945]


def test_a_delivered_event_is_never_sent_again(receiver, people, base_run, sent):
    receiver.set("up")
    hook, _ = hook_for(people, receiver.url, [EventType.JOB_FAILED])
    delivery = services.send_test_event(hook)
    tasks.deliver_webhook(delivery.pk)
    tasks.deliver_webhook(delivery.pk)  # the sweep's resend, or a duplicate message
    assert services.sweep_deliveries(timezone.now() + timedelta(hours=1)) == []
    assert len(receiver.received) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert not services.redeliver(delivery)  # only failed deliveries may be sent again

    # A delivery that another task holds is not sent by a second one.
    other = services.send_test_event(hook)
    WebhookDelivery.objects.filter(pk=other.pk).update(claimed_until=timezone.now() + timedelta(minutes=1))
    assert services.attempt_delivery(other.pk) is None
    assert len(receiver.received) == 1
    assert services.attempt_delivery(other.pk, now=timezone.now() + timedelta(minutes=2)) is None  # lease ran out
    assert len(receiver.received) == 2


def test_events_are_sent_only_once_committed_and_lost_messages_are_swept(receiver, people, base_run, sent,
                                                                          django_capture_on_commit_callbacks):
    hook, _ = hook_for(people, receiver.url, [EventType.JOB_FAILED])
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run)
    job.mark_failed("boom")
    with django_capture_on_commit_callbacks(execute=True):
        training.announce_finished(job)
        assert sent == []  # not before the commit
    delivery = WebhookDelivery.objects.get(webhook=hook)
    assert [(m.name, m.args, m.queue) for m in sent] == [("webhooks.tasks.deliver_webhook", [delivery.pk], "default")]
    # That message was lost (the broker restarted empty): the sweep sends it again once overdue.
    assert services.sweep_deliveries(timezone.now()) == []
    assert services.sweep_deliveries(timezone.now() + timedelta(seconds=61)) == [delivery.pk]
    # A failed attempt asks for the next one after the wait.
    receiver.set("unavailable")
    sent.clear()
    tasks.deliver_webhook(delivery.pk)
    assert [(m.args, m.countdown) for m in sent] == [([delivery.pk], 15)]


def test_every_event_type_fires_from_the_service_that_makes_it_happen(receiver, people, loop_world, sent,  # noqa: F811
                                                                     settings, tmp_path,
                                                                     django_capture_on_commit_callbacks):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    hook, _ = hook_for(people, receiver.url, [e for e in EventType if e not in (EventType.TEST,)],
                       run=loop_world, every_labels=3)
    other_run = training.create_run("elsewhere", loop_world.base_model_dir)
    hook_for(people, receiver.url, [EventType.ROUND_FAILED], run=other_run)  # hears nothing of loop_world

    def types():
        return list(WebhookEvent.objects.order_by("created_at").values_list("type", flat=True))

    # A round that walks its recipe: the policy version its update publishes, then the round.
    round_ = training.start_round(loop_world, "direct")
    update = round_.jobs.get()
    update.mark_running()
    version, _ = publish_artifact(
        "policy", update, PolicyVersion, write=lambda folder: folder.mkdir(parents=True),
        manifest=lambda produced: {},
        create_row=lambda number, folder, produced: PolicyVersion.objects.create(
            number=number, run=loop_world, parent=loop_world.base_version, method="dpo",
            base_model_dir=loop_world.base_model_dir, adapter_dir=str(folder), job=update))
    assert types() == ["policy_version.published"]
    finish(update, policy_version=version.number)
    while (waiting := round_.jobs.exclude(status__in=Job.FINISHED).first()) is not None:  # its later stages
        finish(waiting)
    round_.refresh_from_db()
    assert round_.status == Round.Status.SUCCEEDED
    assert types() == ["policy_version.published", "round.finished"]

    # A stage that fails: the job, then its round.
    failing = training.start_round(loop_world, "direct")
    job = failing.jobs.get()
    job.mark_failed("RuntimeError: NaN in the loss")
    training.announce_finished(job)
    training.announce_finished(job)  # announced again: recorded once
    assert types()[2:] == ["round.failed", "job.failed"]
    failed = WebhookEvent.objects.get(type="round.failed")
    assert failed.data["round"]["number"] == failing.number and "NaN" in failed.data["round"]["error"]
    assert failed.data["round"]["url"] == reverse("round_detail", args=[failing.number])

    # Labels: one event at each multiple of three on the run, whatever the order of calls.
    WebhookEvent.objects.all().delete()
    labeled = loop_world.comparisons.count()  # loop_world's fixture labeled one
    for _ in range(7 - labeled):
        from labeling.models import Comparison, Completion, Prompt

        prompt = Prompt.objects.create(messages=[{"role": "user", "content": f"p{time.time_ns()}"}])
        answers = [Completion.objects.create(prompt=prompt, policy_version=loop_world.base_version, text=t)
                   for t in ("x", "y")]
        comparison = labeling.create_comparison(loop_world, prompt, answers, source="initial")
        with django_capture_on_commit_callbacks(execute=True):  # the label's followers, as after its commit
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
        loop.on_label_submitted(loop_world.pk)  # told twice: recorded once
    assert Comparison.objects.filter(run=loop_world).count() == 7
    counted = WebhookEvent.objects.filter(type="labels.counted").order_by("created_at")
    assert [e.data["labels"] for e in counted] == [3, 6]
    assert {d.webhook_id for d in WebhookDelivery.objects.all()} == {hook.pk}  # the other run's hook heard nothing
    assert [m.args for m in sent] == [[d.pk] for d in WebhookDelivery.objects.filter(event__in=counted)
                                      .order_by("pk")]  # each sent to a worker once committed


@pytest.mark.slow
def test_a_published_reward_model_is_an_event(receiver, people, base_run, marker_labels, sent):  # noqa: F811
    receiver.set("up")
    hook, secret = hook_for(people, receiver.url, [EventType.REWARD_MODEL_PUBLISHED])
    marker_labels(8)
    job = training.create_reward_training_job(base_run)
    assert training.claim_reward_training(job)
    version = training.run_reward_training_job(job)
    assert version is not None
    event = WebhookEvent.objects.get()
    assert event.type == "reward_model.published" and event.data["reward_model"]["number"] == version.number
    assert deliver_due(timezone.now()) == 1
    payload = json.loads(receiver.received[0].body)
    assert payload["data"]["reward_model"] == {
        "id": version.pk, "number": version.number, "update": "full", "parent": None, "label_count": 8,
        "heldout_accuracy": version.heldout_accuracy}
    assert payload["data"]["run"]["url"] == f"/runs/{base_run.pk}/"


def test_a_failed_publish_records_no_event(receiver, people, base_run, sent, settings, tmp_path):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    hook_for(people, receiver.url, [EventType.REWARD_MODEL_PUBLISHED])
    job = Job.objects.create(kind=Job.Kind.TRAIN_REWARD, run=base_run)

    def create_row(number: int, folder: Path, produced) -> RewardModelVersion:
        RewardModelVersion.objects.create(number=number, run=base_run, base_model_dir="/b", weights_dir=str(folder),
                                          label_count=1)
        raise RuntimeError("the disk filled up while registering")

    with pytest.raises(RuntimeError):
        publish_artifact("reward_model", job, RewardModelVersion, lambda folder: folder.mkdir(parents=True),
                         lambda produced: {}, create_row)
    assert not RewardModelVersion.objects.exists() and not WebhookEvent.objects.exists()


@pytest.mark.parametrize("url, why", [
    ("http://93.184.216.34/hook", "plain http"),
    ("ftp://93.184.216.34/hook", "https://"),
    ("file:///etc/passwd", "https://"),
    ("https://10.1.2.3/hook", "private-network"),
    ("https://192.168.0.7/hook", "private-network"),
    ("https://[::ffff:10.0.0.1]/hook", "private-network"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://0.0.0.0/hook", "link-local, multicast or reserved"),
    ("https://user:pw@93.184.216.34/hook", "credentials"),
    ("http://127.0.0.1:8000/hook", "development only"),
    ("https://localhost/hook", "development only"),
    ("https:///nohost", "no host"),
])
def test_urls_a_hook_may_not_have_are_refused(people, url, why):
    with pytest.raises(services.WebhookError, match=why):
        hook_for(people, url, [EventType.JOB_FAILED])
    assert not Webhook.objects.exists()


def test_urls_a_hook_may_have(people, settings):
    hook, secret = hook_for(people, "https://93.184.216.34/hook?team=ml", [EventType.JOB_FAILED])
    assert len(secret) == 64 and hook.secret == secret
    settings.PREFLOOP_WEBHOOK_ALLOW_LOOPBACK = True
    hook_for(people, "http://127.0.0.1:9/hook", [EventType.JOB_FAILED])
    hook_for(people, "http://localhost:9/hook", [EventType.JOB_FAILED])
    settings.PREFLOOP_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    hook_for(people, "https://10.1.2.3/hook", [EventType.JOB_FAILED])
    with pytest.raises(services.WebhookError, match="link-local"):  # never, whatever the settings
        hook_for(people, "https://169.254.169.254/", [EventType.JOB_FAILED])
    with pytest.raises(services.WebhookError, match="unknown event"):
        hook_for(people, "https://93.184.216.34/", ["model.exploded"])
    with pytest.raises(services.WebhookError, match="every_labels"):
        hook_for(people, "https://93.184.216.34/", [EventType.LABELS_COUNTED])


def test_a_url_refused_since_the_hook_was_made_is_not_called(receiver, people, sent, settings):
    receiver.set("up")
    hook, _ = hook_for(people, receiver.url, [EventType.JOB_FAILED])
    settings.PREFLOOP_WEBHOOK_ALLOW_LOOPBACK = False
    delivery = services.send_test_event(hook)
    assert services.attempt_delivery(delivery.pk) == 15
    delivery.refresh_from_db()
    assert receiver.received == [] and "refused: loopback" in delivery.last_error


def test_the_pages_are_for_staff_and_show_the_secret_once(client, people, receiver, sent):
    for page in (reverse("webhooks"),):
        assert client.get(page).status_code == 302  # to the login page
        client.force_login(people.annotator)
        assert client.get(page).status_code == 403
        assert client.post(page, {"url": receiver.url, "events": ["job.failed"]}).status_code == 403
    assert not Webhook.objects.exists()

    client.force_login(people.researcher)
    assert "Webhooks" in client.get(reverse("researcher")).content.decode()  # in the nav
    refused = client.post(reverse("webhooks"), {"url": "http://93.184.216.34/", "events": ["job.failed"]})
    assert refused.status_code == 400 and "plain http" in refused.content.decode()
    made = client.post(reverse("webhooks"), {"name": "ci", "url": receiver.url,
                                             "events": ["job.failed", "round.failed"]})
    hook = Webhook.objects.get()
    assert made.status_code == 200 and hook.secret in made.content.decode() and made["Cache-Control"] == "no-store"
    assert hook.secret not in client.get(reverse("webhooks")).content.decode()

    receiver.set("unavailable")
    client.post(reverse("webhook_test", args=[hook.pk]))
    deliver_due(timezone.now())
    page = client.get(reverse("webhook_detail", args=[hook.pk])).content.decode()
    assert hook.secret not in page
    event = WebhookEvent.objects.get()
    assert str(event.id) in page and "503" in page and "webhook.test" in page

    client.force_login(people.annotator)
    assert client.get(reverse("webhook_detail", args=[hook.pk])).status_code == 403
    assert client.post(reverse("webhook_delete", args=[hook.pk])).status_code == 403
    client.force_login(people.researcher)
    assert client.post(reverse("webhook_delete", args=[hook.pk])).status_code == 302
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()


def test_the_api_makes_lists_tests_and_deletes_hooks(client, people, receiver, sent):
    staff = {"HTTP_AUTHORIZATION": f"Bearer {create_token(people.researcher, 'ops')[1]}"}
    annotator = {"HTTP_AUTHORIZATION": f"Bearer {create_token(people.annotator, 'me')[1]}"}
    body = {"url": receiver.url, "events": ["job.failed"], "name": "ci"}
    assert client.post("/api/v1/webhooks", body, content_type="application/json", **annotator).status_code == 403
    refused = client.post("/api/v1/webhooks", {**body, "url": "https://169.254.169.254/"},
                          content_type="application/json", **staff)
    assert refused.status_code == 400 and "link-local" in refused.json()["error"]
    made = client.post("/api/v1/webhooks", body, content_type="application/json", **staff)
    assert made.status_code == 201, made.content
    hook = made.json()
    assert hook["secret"] == Webhook.objects.get().secret and hook["events"] == ["job.failed"]
    listed = client.get("/api/v1/webhooks", **staff).json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]

    receiver.set("up")
    test = client.post(f"/api/v1/webhooks/{hook['id']}/test", **staff)
    assert test.status_code == 202 and test.json()["status"] == "pending"
    deliver_due(timezone.now())
    deliveries = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", **staff).json()
    assert [(d["event_type"], d["status"], d["attempts"]) for d in deliveries] == [("webhook.test", "delivered", 1)]
    assert deliveries[0]["attempt_log"][0]["status_code"] == 200
    assert deliveries[0]["event_id"] == receiver.event_ids()[0]
    assert verify_signature(hook["secret"], receiver.received[0].body,
                            receiver.received[0].headers["X-PrefLoop-Timestamp"],
                            receiver.received[0].headers["X-PrefLoop-Signature"])

    assert client.delete(f"/api/v1/webhooks/{hook['id']}", **staff).status_code == 204
    assert client.delete(f"/api/v1/webhooks/{hook['id']}", **staff).status_code == 404


def test_the_receiver_in_the_docs_accepts_a_real_delivery_once(receiver, people, sent, capsys):
    """The Python block of docs/webhooks.md, run as written, against what PrefLoop sent."""
    import re

    page = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python tested-by=\S+::test_the_receiver_in_the_docs\S*\n(.*?)```", page, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)

    receiver.set("up")
    hook, secret = hook_for(people, receiver.url, [EventType.JOB_FAILED])
    services.attempt_delivery(services.send_test_event(hook).pk)
    got = receiver.received[0]
    assert namespace["receive"](secret, got.body, got.headers) == 200
    assert namespace["receive"](secret, got.body, got.headers) == 200  # a retry: handled once
    assert capsys.readouterr().out.count("got webhook.test") == 1
    assert namespace["receive"]("another secret", got.body, got.headers) == 401
    assert namespace["receive"](secret, got.body.replace(b"ci", b"CI"), got.headers) == 401
    old = {**got.headers, "X-PrefLoop-Timestamp": str(int(got.headers["X-PrefLoop-Timestamp"]) - 600)}
    assert namespace["receive"](secret, got.body, old) == 401


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_retries_until_the_receiver_is_back_and_sends_once(receiver, people, tmp_path):
    """redis-server and a Celery worker on the default queue: the delivery task's own
    retries (a second apart here) carry an event over an outage of a few seconds."""
    import os

    from django.db import connection

    from tests.processes import running_celery_worker, running_redis, wait_for

    receiver.set("unavailable")
    env = {"DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}", "PREFLOOP_VAR_DIR": str(tmp_path / "var"),
           "PREFLOOP_WEBHOOK_RETRY_SECONDS": "1", "PREFLOOP_WEBHOOK_ALLOW_LOOPBACK": "true"}
    with running_redis(os.environ["REDIS_URL"], tmp_path), \
            running_celery_worker("default", env, tmp_path / "worker.log"):
        hook, secret = hook_for(people, receiver.url, [EventType.JOB_FAILED])
        delivery = services.send_test_event(hook)  # committed at once: the message goes now
        wait_for(lambda: receiver.refused >= 2, 60, "two refused attempts")
        receiver.set("up")
        wait_for(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered", 60,
                 "the delivery after the outage")
        time.sleep(2)  # a duplicate would arrive within the retry interval
    delivery.refresh_from_db()
    assert len(receiver.received) == 1 and receiver.event_ids() == [str(delivery.event_id)]
    assert delivery.attempts == receiver.refused + 1 >= 3
    got = receiver.received[0]
    assert verify_signature(secret, got.body, got.headers["X-PrefLoop-Timestamp"], got.headers["X-PrefLoop-Signature"])


def test_an_https_hook_to_a_server_without_tls_fails_its_attempt_with_the_reason(receiver, people, sent):
    receiver.set("up")
    hook, _ = hook_for(people, f"https://127.0.0.1:{receiver.port}/hook", [EventType.JOB_FAILED])
    delivery = services.send_test_event(hook)
    assert services.attempt_delivery(delivery.pk) == 15
    delivery.refresh_from_db()
    assert receiver.received == [] and "SSL" in delivery.last_error and delivery.last_status_code is None
