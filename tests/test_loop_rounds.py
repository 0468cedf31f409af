"""Rounds and loop control through the services; the model work is stubbed only where a
test is about the orchestration (jobs are marked done by hand), never where it is about
the models."""

from __future__ import annotations

import pytest
from django.urls import reverse

from labeling import services as labeling
from labeling.models import Prompt
from labeling.services import LabelInput
from training import services
from training.models import Job, PolicyVersion, RewardModelVersion, Round, Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def loop_world(base_run, base_policy, people, make_comparison, tmp_path):
    """A run with a reward model, a label with a preference and some prompts: enough for
    rounds of any recipe to start."""
    base_run.comparison_prompts = 2
    base_run.save()
    for i in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"loop prompt {i}"}])
    labeling.submit_label(people.outsider, LabelInput(make_comparison().pk, "a"), require_lease=False)
    RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir=base_policy.base_model_dir,
                                      weights_dir=str(tmp_path / "rm1"), label_count=10)
    return base_run


def finish(job: Job, **result) -> None:
    job.status = Job.Status.SUCCEEDED
    job.result = result
    job.save()
    services.announce_finished(job)


def publish(run: Run, number: int, parent: PolicyVersion, method: str = "ppo") -> PolicyVersion:
    """What a policy-update job's publishing leaves behind (the training itself is
    tested in test_policy_methods.py)."""
    return PolicyVersion.objects.create(number=number, run=run, parent=parent, method=method,
                                        base_model_dir=parent.base_model_dir, adapter_dir=f"/adapters/v{number}")


def test_an_rlhf_round_walks_its_stages_one_job_each(loop_world, people, base_policy):
    round_ = services.start_round(loop_world, "rlhf", requested_by=people.researcher)
    assert (round_.number, round_.stage, round_.policy_before) == (1, "reward_model", base_policy)
    assert round_.stages == ["reward_model", "policy_update", "comparisons", "evaluation"]
    rm_job = round_.jobs.get()
    assert rm_job.kind == Job.Kind.TRAIN_REWARD

    finish(rm_job, version=1)
    round_.refresh_from_db()
    assert round_.stage == "policy_update" and round_.reward_model.number == 1
    update = round_.jobs.get(kind=Job.Kind.POLICY_UPDATE)
    # Pinned to the round's inputs and the run's method and config.
    assert update.params["method"] == "ppo" and update.params["inputs"]["start_version"] == 0
    assert update.params["inputs"]["reward_model"] == 1 and len(update.params["inputs"]["prompt_ids"]) == 3
    assert update.params["config"]["kl_coef"] == loop_world.method_config["kl_coef"]

    v1 = publish(loop_world, 1, base_policy)
    finish(update, policy_version=1, reward_model=1)
    finish(update, policy_version=1, reward_model=1)  # a redelivered task reports again: nothing moves twice
    round_.refresh_from_db()
    loop_world.refresh_from_db()
    assert (round_.stage, round_.policy_after, loop_world.head) == ("comparisons", v1, v1)
    generation = round_.jobs.get(kind=Job.Kind.GENERATE)
    assert generation.params["policy_version"] == 1 and generation.params["versus"] == [0]
    assert len(generation.params["prompt_ids"]) == 2

    finish(generation)
    round_.refresh_from_db()
    assert round_.stage == "evaluation"
    finish(round_.jobs.get(kind=Job.Kind.EVALUATE), answered=4, scored=4)
    round_.refresh_from_db()
    assert (round_.stage, round_.status) == ("done", Round.Status.SUCCEEDED)
    assert round_.jobs.count() == 4


def test_the_offline_recipe_asks_nobody_and_the_direct_recipe_asks_after(loop_world, base_policy):
    loop_world.method = "dpo"
    loop_world.method_config = {}
    loop_world.save()
    offline = services.start_round(loop_world, "offline")
    update = offline.jobs.get()
    assert update.params["method"] == "dpo" and "reward_model" not in update.params["inputs"]
    assert update.params["inputs"]["last_label_id"] > 0 and "prompt_ids" not in update.params["inputs"]
    finish(update, policy_version=publish(loop_world, 1, base_policy, "dpo").number)
    offline.refresh_from_db()
    assert offline.stage == "evaluation"
    finish(offline.jobs.get(kind=Job.Kind.EVALUATE))
    offline.refresh_from_db()
    assert offline.status == Round.Status.SUCCEEDED
    assert not offline.jobs.filter(kind=Job.Kind.GENERATE).exists()  # no new comparisons

    direct = services.start_round(loop_world, "direct")
    assert direct.policy_before.number == 1  # the head moved
    finish(direct.jobs.get(), policy_version=publish(loop_world, 2, direct.policy_before, "dpo").number)
    generation = direct.jobs.get(kind=Job.Kind.GENERATE)
    assert generation.params["policy_version"] == 2 and generation.params["versus"] == [0, 1]
    assert generation.total_steps == 3 * 2


def test_a_failed_stage_fails_the_round_and_nothing_follows(loop_world):
    round_ = services.start_round(loop_world, "direct")
    job = round_.jobs.get()
    job.mark_failed("RuntimeError: NaN in the value loss")
    services.announce_finished(job)
    round_.refresh_from_db()
    assert round_.status == Round.Status.FAILED and "NaN" in round_.error
    assert round_.jobs.count() == 1


def test_one_round_per_run_and_what_a_method_needs_is_checked_first(base_run, people, make_comparison):
    with pytest.raises(services.RoundError, match="no labels with a preference"):
        services.start_round(base_run, "rlhf")
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    with pytest.raises(services.RoundError, match="needs a reward model"):
        services.start_round(base_run, "direct")  # PPO without a reward model and no stage that trains one
    services.start_round(base_run, "rlhf")
    with pytest.raises(services.RoundError, match="still running"):
        services.start_round(base_run, "rlhf")
    other = services.create_run("other", base_run.base_model_dir)
    with pytest.raises(services.RoundError, match="no labels"):
        services.start_round(other, "rlhf")  # the default run's labels are not the other run's


def test_settings_changed_after_a_job_was_queued_do_not_change_it(loop_world):
    round_ = services.start_round(loop_world, "direct")
    job = round_.jobs.get()
    pinned = dict(job.params)
    changed = services.settings_of(loop_world)
    changed = services.RunSettings(**{**changed.__dict__, "method": "grpo", "method_config": {},
                                      "update_prompts": 1})
    services.update_run_settings(loop_world, changed)
    job.refresh_from_db()
    assert job.params == pinned and job.params["method"] == "ppo" and len(job.params["inputs"]["prompt_ids"]) == 3
    loop_world.refresh_from_db()
    assert loop_world.method == "grpo" and loop_world.method_config["num_generations"] >= 2


def test_stopping_the_loop_holds_a_round_at_its_next_stage_until_resumed(loop_world, people):
    round_ = services.start_round(loop_world, "rlhf")
    services.pause_runs(people.annotator, "the answers got weird")
    finish(round_.jobs.get(), version=1)
    round_.refresh_from_db()
    assert round_.stage == "policy_update" and not round_.jobs.filter(kind=Job.Kind.POLICY_UPDATE).exists()
    assert services.resume_runs([loop_world]) == 1
    assert round_.jobs.filter(kind=Job.Kind.POLICY_UPDATE, status=Job.Status.PENDING).count() == 1


def test_the_auto_loop_starts_rounds_after_n_labels_unless_stopped(loop_world, people, make_comparison,
                                                                   django_capture_on_commit_callbacks):
    loop_world.auto_loop, loop_world.loop_min_labels = True, 3
    loop_world.save()
    RewardModelVersion.objects.all().delete()
    services.pause_runs(people.annotator)
    comparisons = [make_comparison() for _ in range(3)]
    for comparison in comparisons[:2]:
        with django_capture_on_commit_callbacks(execute=True):
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    assert not Round.objects.exists()  # stopped: no automatic round
    services.resume_runs([loop_world])
    with django_capture_on_commit_callbacks(execute=True):
        labeling.submit_label(people.annotator, LabelInput(comparisons[2].pk, "b"), require_lease=False)
    round_ = Round.objects.get()
    assert (round_.run, round_.recipe, round_.trigger) == (loop_world, "rlhf", "3 new labels")
    assert not Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, round=None).exists()  # the round trains it


def test_every_annotator_can_stop_the_loop_but_only_staff_resume_it(client, people, base_run):
    other = services.create_run("other", base_run.base_model_dir)
    client.force_login(people.annotator)
    assert b"Stop the loop" in client.get(reverse("label")).content
    client.post(reverse("stop_loop"), {"reason": "reward hacking: every answer says 'great question'",
                                        "next": "/label/"})
    for run in (base_run, other):  # the emergency brake stops every run
        run.refresh_from_db()
        assert run.paused and run.paused_by == people.annotator and "great question" in run.pause_reason
    page = client.get(reverse("label")).content
    assert b"The loop of run default is stopped" in page and b"Stop the loop</button>" not in page
    assert client.post(reverse("resume_loop")).status_code == 403
    client.force_login(people.researcher)
    client.post(reverse("resume_loop"), {"run": other.pk})
    other.refresh_from_db()
    base_run.refresh_from_db()
    assert not other.paused and base_run.paused  # one run resumed, the other still stopped
    client.post(reverse("resume_loop"))
    base_run.refresh_from_db()
    assert not base_run.paused


def test_round_buttons_start_rounds_for_staff(client, people, loop_world):
    client.force_login(people.researcher)
    response = client.post(reverse("start_round", args=[loop_world.pk]), {"recipe": "direct"}, follow=True)
    assert b"Started round 1" in response.content
    response = client.post(reverse("start_round", args=[loop_world.pk]), {"recipe": ""}, follow=True)
    assert b"still running" in response.content
    client.force_login(people.annotator)
    assert client.post(reverse("start_round", args=[loop_world.pk])).status_code == 403


def test_a_policy_update_without_a_reward_model_is_refused(base_run, base_policy):
    with pytest.raises(services.PolicyUpdateError, match="needs a reward model"):
        services.create_policy_update_job(base_run, base_policy, reward_model=None)
    assert not Job.objects.exists() and PolicyVersion.objects.count() == 1


def test_a_full_round_adopts_a_reward_model_job_already_waiting(loop_world, people):
    waiting = services.request_reward_training(loop_world, requested_by=people.researcher)
    round_ = services.start_round(loop_world, "rlhf")
    assert list(round_.jobs.all()) == [waiting]
    assert Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).count() == 1


@pytest.mark.parametrize("taken_by", ["a worker's claim", "a researcher's cancel"])
def test_a_round_does_not_adopt_a_waiting_job_taken_while_it_asked(loop_world, people, monkeypatch, taken_by):
    """The request reads the waiting job, then locks it; if a worker claimed it or a
    researcher cancelled it in between, the round gets a job of its own, not one it
    would wait on forever without being part of it."""
    from django.db.models.query import QuerySet

    waiting = services.request_reward_training(loop_world, requested_by=people.researcher)
    first, taken = QuerySet.first, []

    def taken_right_after_the_read(queryset):
        found = first(queryset)
        if found is not None and found.pk == waiting.pk and not taken:
            taken.append(True)
            if taken_by == "a worker's claim":
                assert Job.objects.get(pk=waiting.pk).mark_running("elsewhere:1")
            else:
                services.cancel_job(Job.objects.get(pk=waiting.pk), people.researcher)
        return found

    monkeypatch.setattr(QuerySet, "first", taken_right_after_the_read)
    round_ = services.start_round(loop_world, "rlhf")
    job = round_.jobs.get()
    assert taken and job != waiting and job.status == Job.Status.PENDING and job.kind == Job.Kind.TRAIN_REWARD


def test_a_stage_that_cannot_be_queued_fails_its_round(loop_world, django_capture_on_commit_callbacks):
    """Outside the worker tests nothing listens on the test broker's port."""
    with django_capture_on_commit_callbacks(execute=True):
        round_ = services.start_round(loop_world, "direct")
    round_.refresh_from_db()
    assert round_.status == Round.Status.FAILED and "could not reach the task queue" in round_.error
