"""The progress pages on a history built through the services (tests/progress_world.py).
Win rates here are checked against values worked out by hand; the maths itself is
tested in test_rating_statistics.py."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from labeling import services as labeling
from labeling.services import LabelInput
from tests import progress_world
from training.games import head_to_head, newest_judge, version_games
from training.models import Job, Round

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(people, base_policy, settings, tmp_path):
    return progress_world.build(people, base_policy, settings, tmp_path)


def charts_of(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="chart-specs" type="application/json">') + len(
        '<script id="chart-specs" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_human_win_rates_count_people_only_with_wilson_intervals(world):
    games = version_games([world.run])
    # People: ann 8 wins, 1 loss, 1 tie for v1; bea 1 win, 1 loss. The simulated
    # annotator's ten v0 wins are not there.
    assert len(games) == 12
    rate = head_to_head(games, 1, 0)
    assert (rate.wins, rate.ties, rate.losses) == (9, 1, 2)
    # (9 + 1/2) / 12 = 0.7917; Wilson, z = 1.96: centre (p + z²/2n)/(1 + z²/n) = 0.7209,
    # half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n) = 0.2121.
    assert rate.rate == pytest.approx(9.5 / 12)
    assert (rate.low, rate.high) == (pytest.approx(0.5088, abs=1e-4), pytest.approx(0.9331, abs=1e-4))
    assert head_to_head(games, 0, 1).rate == pytest.approx(2.5 / 12)


def test_reward_model_win_rates_use_the_latest_scores_on_the_evaluation_prompts(world):
    judge = newest_judge(world.run)
    assert judge.number == 1
    rate = judge.head_to_head(1, 0)
    assert (rate.wins, rate.ties, rate.losses) == (3, 0, 1)  # see EVALUATION_SCORES
    assert judge.mean_score(1) == pytest.approx(sum(progress_world.EVALUATION_SCORES[1]) / 4)


def test_dashboard_shows_the_loop_plotted(client, people, world):
    client.force_login(people.researcher)
    response = client.get(reverse("progress"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/vendor/plotly.min.js" in html and "cdn" not in html.lower()
    assert "0.79 [0.51, 0.93] (9–1–2)" in html  # people, v1 vs base
    assert "0.75 [0.30, 0.95] (3–0–1)" in html  # reward model v1 on the evaluation prompts
    charts = charts_of(response)
    assert set(charts) >= {"labels-per-day", "labels-per-annotator", "reward-model-accuracy", "ppo-reward",
                           "ppo-kl", "ppo-entropy", "win-rates", "bradley-terry"}
    assert not any(chart_id.startswith("dpo-") for chart_id in charts)  # only the methods the run used
    people_vs_base = charts["win-rates"]["data"][0]
    assert people_vs_base["y"] == [pytest.approx(9.5 / 12)] and people_vs_base["error_y"]["array"][0] > 0
    assert charts["ppo-kl"]["data"][0]["y"] == [0.0, 0.03, 0.07]
    assert charts["reward-model-accuracy"]["data"][0]["y"] == [0.625]
    assert [s.player for s in response.context["rankings"][0].strengths] == ["v1", "v0"]
    # People only: ann and bea, not the simulated annotator.
    per_annotator = charts["labels-per-annotator"]["data"][0]
    assert dict(zip(per_annotator["x"], per_annotator["y"], strict=True)) == {"ann": 10, "bea": 2}
    assert sum(sum(trace["y"]) for trace in charts["labels-per-day"]["data"]) == 12
    agreement = response.context["agreement"]
    assert (agreement.items, agreement.pairs, agreement.agreeing) == (2, 2, 1)
    assert "Round 1 succeeded" in html and "Policy v1 published (PPO from v0)" in html


def test_round_page_shows_config_curves_and_answers_before_and_after(client, people, world):
    client.force_login(people.researcher)
    response = client.get(reverse("round_detail", args=[world.round.number]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "kl_coef" in html and "0.05" in html and "ppo/reward" in html and "Direct" not in html
    assert response.context["method"].name == "ppo"
    assert [v.number for v in response.context["shown_versions"]] == [0, 1]
    first = response.context["evaluation"][0]
    assert [cell.html for cell in first.cells] == [
        f"<p>v0 answers {world.eval_prompts[0].text}</p>", f"<p>v1 answers {world.eval_prompts[0].text}</p>"]
    assert len(response.context["jobs"]) == 3  # policy update, comparisons, evaluation
    assert charts_of(response)["ppo-entropy"]["data"][0]["y"] == [2.5, 2.4, 2.2]


def test_version_page_shows_its_win_rates_and_escapes_model_output(client, people, world):
    sample = world.v1.evaluation_samples.first()
    sample.completion.text = 'Try <script>alert("x")</script><img src=x onerror=alert(1)> this'
    sample.completion.save()
    client.force_login(people.researcher)
    response = client.get(reverse("version_detail", args=[1]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<img" not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert" in html  # shown as text
    assert "0.79 [0.51, 0.93] (9–1–2)" in html and "round 1" in html
    assert "trained by <b>PPO</b>" in html and "Run default" in html
    assert "KL to the base: not measured yet" in html
    world.v1.kl_to_base, world.v1.kl_to_base_stderr = 0.4567, 0.0321
    world.v1.save(update_fields=["kl_to_base", "kl_to_base_stderr"])
    html = client.get(reverse("version_detail", args=[1])).content.decode()
    assert "KL to the base: 0.457 ± 0.032 nats per answer" in html
    assert "accelerate launch" not in html  # trained in one process
    world.v1.metrics = {**world.v1.metrics, "launch": {"processes": 2}}
    world.v1.save(update_fields=["metrics"])
    html = client.get(reverse("version_detail", args=[1])).content.decode()
    assert 'Trained as <span id="version-launch">2 processes under <code>accelerate launch</code>' in html
    assert client.get(reverse("version_detail", args=[0])).status_code == 200
    assert client.get(reverse("version_detail", args=[7])).status_code == 404


def test_me_shows_an_annotators_own_numbers(client, people, world, make_comparison):
    comparison = make_comparison()
    labeling.submit_label(people.annotator, LabelInput(comparison.pk, "skip"), require_lease=False)
    client.force_login(world.bea)
    response = client.get(reverse("me"))
    summary = response.context["summary"]
    assert (summary["labels"], summary["today"], summary["skips"]) == (2, 2, 0)
    assert (summary["agreeing"], summary["compared"]) == (1, 2)
    assert summary["median_seconds"] == 5.0
    html = response.content.decode()
    assert "ann" not in html.replace("annotator", "")  # nobody else's name or labels

    client.force_login(people.annotator)
    summary = client.get(reverse("me")).context["summary"]
    assert (summary["labels"], summary["skips"]) == (10, 1)


def test_running_job_reports_an_eta_and_a_failed_one_its_error(client, people, base_run):
    job = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, status=Job.Status.RUNNING, step=2, total_steps=10,
                             started_at=timezone.now() - timedelta(seconds=10))
    failed = Job.objects.create(kind=Job.Kind.POLICY_UPDATE, run=base_run, status=Job.Status.FAILED,
                                error="ValueError: no reward model")
    client.force_login(people.researcher)
    status = client.get(reverse("job_status", args=[job.pk])).json()
    assert (status["step"], status["total_steps"]) == (2, 10)
    assert status["eta_seconds"] == pytest.approx(40, abs=2)  # 10 s for 2 steps, 8 to go
    assert client.get(reverse("job_status", args=[failed.pk])).json()["eta_seconds"] is None
    html = client.get(reverse("progress")).content.decode()
    assert "ValueError: no reward model" in html and 'class="job-failed"' in html


def test_worker_status_says_when_the_broker_does_not_answer(client, people):
    # No redis runs on the tests' private broker port outside the worker tests.
    cache.clear()
    client.force_login(people.researcher)
    started = time.monotonic()
    status = client.get(reverse("workers")).json()
    assert status["workers"] == [] and "broker did not answer" in status["error"]
    assert time.monotonic() - started < 15


def test_evaluate_now_queues_one_evaluation_job(client, people, base_run, django_capture_on_commit_callbacks):
    client.force_login(people.researcher)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("evaluate", args=[base_run.pk]))
    assert response.status_code == 302
    job = Job.objects.get(kind=Job.Kind.EVALUATE)
    assert job.requested_by == people.researcher and job.round is None
    assert len(callbacks) == 1  # sent to the broker after commit


def test_empty_dashboard_renders(client, people, base_policy):
    client.force_login(people.researcher)
    response = client.get(reverse("progress"))
    assert response.status_code == 200 and response.context["rankings"] == []
    assert Round.objects.count() == 0
    charts = response.context["charts"]
    for name in ("labels-per-day", "labels-per-annotator", "win-rates", "reward-model-accuracy"):
        layout = charts[name]["layout"]
        assert layout["annotations"][0]["text"] == "Nothing to show yet", name
        assert layout["xaxis"] == {"visible": False}, name


def test_a_label_dated_after_today_does_not_break_the_pages(client, people, world):
    from labeling.models import Label

    Label.objects.filter(annotator=world.bea).update(created_at=timezone.now() + timedelta(days=3))
    client.force_login(people.researcher)
    assert client.get(reverse("progress")).status_code == 200
    client.force_login(world.bea)
    assert client.get(reverse("me")).status_code == 200
