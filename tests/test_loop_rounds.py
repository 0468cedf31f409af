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
from training.models import Job, LoopState, PolicyVersion, RewardModelVersion, Round

pytestmark = pytest.mark.django_db


@pytest.fixture
def loop_world(base_policy, settings, tmp_path):
    """A base policy, a reward model row and some prompts: enough for rounds to start."""
    settings.PREFLOOP_ROUND_COMPARISON_PROMPTS = 2
    for i in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"loop prompt {i}"}])
    RewardModelVersion.objects.create(number=1, base_model_dir=base_policy.base_model_dir,
                                      weights_dir=str(tmp_path / "rm1"), label_count=10)
    return base_policy


def finish(job: Job, **result) -> None:
    job.status = Job.Status.SUCCEEDED
    job.result = result
    job.save()
    services.job_finished(job)


def test_a_full_round_walks_its_stages_one_job_each(loop_world, people):
    round_ = services.start_round(Round.Kind.FULL, requested_by=people.researcher)
    assert (round_.number, round_.stage, round_.policy_before) == (1, Round.Stage.REWARD_MODEL, loop_world)
    rm_job = round_.jobs.get()
    assert rm_job.kind == Job.Kind.TRAIN_REWARD

    finish(rm_job, version=1)
    round_.refresh_from_db()
    assert round_.stage == Round.Stage.PPO and round_.reward_model.number == 1
    ppo_job = round_.jobs.get(kind=Job.Kind.PPO)

    v1 = PolicyVersion.objects.create(number=1, parent=loop_world, base_model_dir=loop_world.base_model_dir)
    assert ppo_job.params == {"policy_version": 0, "reward_model": 1}  # pinned to the round's inputs
    finish(ppo_job, policy_version=1, reward_model=1)
    finish(ppo_job, policy_version=1, reward_model=1)  # a redelivered task reports again: nothing moves twice
    round_.refresh_from_db()
    assert (round_.stage, round_.policy_after) == (Round.Stage.COMPARISONS, v1)
    generation = round_.jobs.get(kind=Job.Kind.GENERATE)
    assert generation.params["policy_version"] == 1 and generation.params["versus"] == [0]
    assert len(generation.params["prompt_ids"]) == 2

    finish(generation)
    round_.refresh_from_db()
    assert round_.stage == Round.Stage.EVALUATION
    finish(round_.jobs.get(kind=Job.Kind.EVALUATE), answered=4, scored=4)
    round_.refresh_from_db()
    assert (round_.stage, round_.status) == (Round.Stage.DONE, Round.Status.SUCCEEDED)
    assert round_.jobs.count() == 4


def test_a_later_round_compares_the_new_version_with_the_previous_one_and_the_base(loop_world):
    v1 = PolicyVersion.objects.create(number=1, parent=loop_world, base_model_dir=loop_world.base_model_dir)
    round_ = services.start_round(Round.Kind.PPO)
    assert round_.policy_before == v1
    v2 = PolicyVersion.objects.create(number=2, parent=v1, base_model_dir=loop_world.base_model_dir)
    finish(round_.jobs.get(), policy_version=2, reward_model=1)
    generation = round_.jobs.get(kind=Job.Kind.GENERATE)
    assert generation.params["policy_version"] == v2.number and generation.params["versus"] == [0, 1]
    assert generation.total_steps == 3 * 2


def test_a_failed_stage_fails_the_round_and_nothing_follows(loop_world):
    round_ = services.start_round(Round.Kind.PPO)
    job = round_.jobs.get()
    job.mark_failed("RuntimeError: NaN in the value loss")
    services.job_finished(job)
    round_.refresh_from_db()
    assert round_.status == Round.Status.FAILED and "NaN" in round_.error
    assert round_.jobs.count() == 1


def test_one_round_at_a_time_and_ppo_needs_a_reward_model(base_policy):
    with pytest.raises(services.RoundError, match="no reward model"):
        services.start_round(Round.Kind.PPO)
    services.start_round(Round.Kind.FULL)
    with pytest.raises(services.RoundError, match="still running"):
        services.start_round(Round.Kind.FULL)


def test_stopping_the_loop_holds_a_round_at_its_next_stage_until_resumed(loop_world, people):
    round_ = services.start_round(Round.Kind.FULL)
    services.pause_loop(people.annotator, "the answers got weird")
    finish(round_.jobs.get(), version=1)
    round_.refresh_from_db()
    assert round_.stage == Round.Stage.PPO and not round_.jobs.filter(kind=Job.Kind.PPO).exists()
    services.resume_loop()
    assert round_.jobs.filter(kind=Job.Kind.PPO, status=Job.Status.PENDING).count() == 1


def test_the_auto_loop_starts_full_rounds_after_n_labels_unless_stopped(loop_world, people, settings,
                                                                        make_comparison,
                                                                        django_capture_on_commit_callbacks):
    settings.PREFLOOP_AUTO_LOOP = True
    settings.PREFLOOP_LOOP_MIN_LABELS = 2
    RewardModelVersion.objects.all().delete()
    services.pause_loop(people.annotator)
    comparisons = [make_comparison() for _ in range(3)]
    for comparison in comparisons[:2]:
        with django_capture_on_commit_callbacks(execute=True):
            labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"))
    assert not Round.objects.exists()  # stopped: no automatic round
    services.resume_loop()
    with django_capture_on_commit_callbacks(execute=True):
        labeling.submit_label(people.annotator, LabelInput(comparisons[2].pk, "b"))
    round_ = Round.objects.get()
    assert (round_.kind, round_.trigger) == (Round.Kind.FULL, "2 new labels")
    assert not Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, round=None).exists()  # the round trains it


def test_every_annotator_can_stop_the_loop_but_only_staff_resume_it(client, people):
    client.force_login(people.annotator)
    assert b"Stop the loop" in client.get(reverse("label")).content
    client.post(reverse("stop_loop"), {"reason": "reward hacking: every answer says 'great question'",
                                        "next": "/label/"})
    state = LoopState.current()
    assert state.paused and state.paused_by == people.annotator and "great question" in state.reason
    assert b"The loop is stopped" in client.get(reverse("label")).content
    assert client.post(reverse("resume_loop")).status_code == 403
    client.force_login(people.researcher)
    client.post(reverse("resume_loop"))
    assert not LoopState.current().paused


def test_round_buttons_start_rounds_for_staff(client, people, loop_world):
    client.force_login(people.researcher)
    response = client.post(reverse("run_round"), {"kind": "ppo"}, follow=True)
    assert b"Started round 1" in response.content
    response = client.post(reverse("run_round"), {"kind": "full"}, follow=True)
    assert b"still running" in response.content
    client.force_login(people.annotator)
    assert client.post(reverse("run_round"), {"kind": "full"}).status_code == 403


def test_a_ppo_job_without_a_reward_model_fails_and_publishes_nothing(base_policy):
    job = services.create_ppo_job()
    assert services.run_ppo_job(job) is None
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "no reward model" in job.error
    assert PolicyVersion.objects.count() == 1


def test_a_full_round_adopts_a_reward_model_job_already_waiting(loop_world, people):
    waiting = services.request_reward_training(requested_by=people.researcher)
    round_ = services.start_round(Round.Kind.FULL)
    assert list(round_.jobs.all()) == [waiting]
    assert Job.objects.filter(kind=Job.Kind.TRAIN_REWARD).count() == 1


def test_a_stage_that_cannot_be_queued_fails_its_round(loop_world, django_capture_on_commit_callbacks):
    """Outside the worker tests nothing listens on the test broker's port."""
    with django_capture_on_commit_callbacks(execute=True):
        round_ = services.start_round(Round.Kind.PPO)
    round_.refresh_from_db()
    assert round_.status == Round.Status.FAILED and "could not reach the task queue" in round_.error
