"""A researcher watches /progress/ in a real browser while a real Celery worker runs a
job: the bar advances without a reload, the ETA shows, the charts render (plotly.js
from our own static files, under our CSP) and the worker is listed with its queues."""

from __future__ import annotations

import os
import time

import pytest

from labeling.models import Prompt
from tests import progress_world
from tests.conftest import ARTIFACT_DIR
from tests.processes import running_celery_worker, running_redis, wait_for
from tests.test_label_browser import browser  # noqa: F401 (fixture)
from tests.test_reward_model_training import use_model
from tests.test_worker_integration import worker_env
from training import services
from training.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


PROMPTS = 160


def test_dashboard_follows_a_running_job_and_draws_the_charts(browser, live_server, people, base_run,  # noqa: F811
                                                              base_policy, settings, tmp_path, tiny_model_dir):
    use_model(base_run, tiny_model_dir)
    base_run.query_selection = "random"
    base_run.save()
    log_path = tmp_path / "worker.log"
    # Slow enough to watch: one prompt per generate call, 48 tokens each (pinned by the job
    # here), for 160 prompts: on a fast machine 40 were done within the page's 2 s refresh.
    settings.PREFLOOP_GENERATION_BATCH_SIZE, settings.PREFLOOP_MAX_NEW_TOKENS = 1, 48
    env = worker_env(tiny_model_dir, tmp_path / "var")

    with running_redis(os.environ["REDIS_URL"], tmp_path):
        # The history's round jobs reach the broker as they are created and are finished
        # by hand; the worker later finds them finished and leaves them be.
        progress_world.build(people, base_policy, settings, tmp_path)
        for i in range(PROMPTS):
            Prompt.objects.create(messages=[{"role": "user", "content": f"Say something about {i}."}])
        with running_celery_worker("gpu", env, log_path):
            job = services.request_generation(base_run, base_policy, prompt_count=PROMPTS,
                                              requested_by=people.researcher)
            wait_for(lambda: Job.objects.get(pk=job.pk).step > 0, 120, "the job to start")
            problems = watch_the_dashboard(browser, live_server, job)

    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED, log_path.read_text()[-3000:]
    assert not problems, problems  # no script error, no CSP violation


def watch_the_dashboard(browser, live_server, job: Job) -> list[str]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{live_server.url}/progress/")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "pw-rita-123")
    page.press("input[name=password]", "Enter")
    page.wait_for_url("**/progress/")

    row = f'#jobs tr[data-job-url$="/jobs/{job.pk}.json"]'
    seen, etas = [], set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = page.evaluate(f"""() => {{ const row = document.querySelector('{row}');
            return row && [row.querySelector('progress').value, row.querySelector('.job-eta').textContent,
                           row.querySelector('.job-status').textContent]; }}""")
        if state:
            seen.append(state[0])
            etas.add(state[1])
            if state[2] == "succeeded":
                break
        if len(seen) == 8:
            ARTIFACT_DIR.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT_DIR / "progress-running-job.png"))
        time.sleep(0.25)
    running = sorted({value for value in seen if 0 < value < 1})
    assert len(running) >= 2, f"the bar did not advance while the job ran: {seen[:5]}…{seen[-5:]}"
    assert seen == sorted(seen), "the bar went backwards"
    assert any(eta.endswith(" s") for eta in etas), etas

    page.wait_for_selector(f'{row}[data-finished="1"]', timeout=30_000)  # after the reload too
    for chart in ("win-rates", "bradley-terry", "ppo-reward", "ppo-kl", "ppo-entropy", "reward-model-accuracy",
                  "labels-per-day", "labels-per-annotator"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=15_000)
    page.wait_for_selector("#workers .worker-alive", timeout=15_000)
    worker = page.locator("#workers .worker-alive").first.text_content()
    assert "gpu" in worker and "test-" in worker
    page.screenshot(path=str(ARTIFACT_DIR / "progress-dashboard.png"), full_page=True)
    context.close()
    return problems
