"""Bake-offs: several methods from one start on the same labels, judged blind by people,
one promoted to be the run's head. The state machine is driven here by finishing its
jobs by hand (as test_loop_rounds does for rounds); the last test trains real candidates
on the tiny model through the command."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from labeling import services as labeling
from labeling.models import Comparison, Completion, Label, Prompt
from labeling.services import LabelInput
from training import services
from training.games import head_to_head, run_ranking, version_games
from training.ml.generation import Sample, SamplingConfig
from training.models import BakeOff, EvaluationSample, Job, PolicyVersion, RewardModelVersion, RewardScore, Round, Run
from training.pages import KlToBase
from training.services.evaluation import evaluation_prompts, store_evaluation_samples
from training.services.reward_models import preference_labels

pytestmark = pytest.mark.django_db

METHODS = ["ppo", "grpo", "dpo"]
TRAINING_SECONDS = {"ppo": 90, "dpo": 30}


def finish(job: Job, status: str = Job.Status.SUCCEEDED, seconds: float = 10, **result) -> None:
    """What a worker leaves behind, announced as the task would."""
    job.status, job.result = status, result
    job.started_at = timezone.now() - timedelta(seconds=seconds)
    job.finished_at = timezone.now()
    job.error = "" if status == Job.Status.SUCCEEDED else "RuntimeError: out of memory"
    job.save()
    services.announce_finished(job)


def publish(run: Run, number: int, parent: PolicyVersion, method: str, history=()) -> PolicyVersion:
    return PolicyVersion.objects.create(number=number, run=run, parent=parent, method=method,
                                        base_model_dir=parent.base_model_dir, adapter_dir=f"/adapters/v{number}",
                                        metrics={"history": list(history), "seconds": 1.0})


@pytest.fixture
def bakeoff_world(base_run, base_policy, people, make_comparison, settings, tmp_path):
    """A run with a reward model, a label with a preference, 16 prompts (4 of them the
    evaluation set) and two open comparisons of other work at priorities 0.2 and 0.8."""
    settings.PREFLOOP_EVAL_PROMPTS = 4
    settings.PREFLOOP_OVERLAP_SHARE = 0.0  # one label per comparison: the counts below stay simple
    base_run.update_prompts = 3
    base_run.save()
    for i in range(16):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Question {i}?"}])
    labeling.submit_label(people.outsider, LabelInput(make_comparison().pk, "a"), require_lease=False)
    rm = RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir=base_policy.base_model_dir,
                                           weights_dir=str(tmp_path / "rm1"), label_count=1)
    other_work = [make_comparison(priority=p) for p in (0.2, 0.8)]
    return SimpleNamespace(run=base_run, v0=base_policy, rm=rm, other_work=other_work)


def answer_evaluation(bakeoff: BakeOff, scores: dict[int, list[float]]) -> None:
    """The model-free part of the evaluation job: each player's answers, scored by the
    bake-off's reward model (scores in the evaluation prompts' order)."""
    prompts = evaluation_prompts(bakeoff.run)
    for number, per_prompt in scores.items():
        version = PolicyVersion.objects.get(number=number)
        answers = [Sample(f"Answer {i} about {p.text}", True, 5) for i, p in enumerate(prompts)]
        store_evaluation_samples(bakeoff.evaluation_job, version, prompts, answers, SamplingConfig(seed=0))
        for prompt, score in zip(prompts, per_prompt, strict=True):
            completion = EvaluationSample.objects.get(policy_version=version, prompt=prompt).completion
            RewardScore.objects.create(reward_model=bakeoff.reward_model, completion=completion, score=score)


@pytest.fixture
def judged_bakeoff(bakeoff_world, people):
    """A bake-off of PPO, GRPO and DPO from v0: GRPO fails, PPO publishes v1 and DPO v2,
    all three answer the evaluation prompts, and the comparisons are queued."""
    bakeoff = services.start_bakeoff(bakeoff_world.run, METHODS, requested_by=people.researcher)
    jobs = {c.method: c.job for c in bakeoff.candidates.all()}
    v1 = publish(bakeoff_world.run, 1, bakeoff_world.v0, "ppo", history=[{"step": 1, "ppo/kl": 0.01},
                                                                         {"step": 2, "ppo/kl": 0.04}])
    finish(jobs["ppo"], seconds=TRAINING_SECONDS["ppo"], policy_version=1, reward_model=1)
    finish(jobs["grpo"], status=Job.Status.FAILED)
    bakeoff.refresh_from_db()
    assert bakeoff.status == BakeOff.Status.TRAINING  # DPO still trains
    publish(bakeoff_world.run, 2, bakeoff_world.v0, "dpo")
    finish(jobs["dpo"], seconds=TRAINING_SECONDS["dpo"], policy_version=2)
    bakeoff.refresh_from_db()
    assert bakeoff.status == BakeOff.Status.EVALUATING
    answer_evaluation(bakeoff, {0: [0.0, 0.0, 0.0, 0.0], 1: [1.0, 0.5, 0.5, 0.0], 2: [-1.0, 0.0, 0.0, 0.2]})
    finish(bakeoff.evaluation_job, answered=12, scored=12)
    bakeoff.refresh_from_db()
    return SimpleNamespace(**vars(bakeoff_world), bakeoff=bakeoff, v1=v1, jobs=jobs)


def test_candidates_start_together_pinned_alike_and_leave_the_head_alone(bakeoff_world, people, client):
    run = bakeoff_world.run
    run.method_config = {**run.method_config, "kl_coef": 0.123}
    run.save()
    bakeoff = services.start_bakeoff(run, METHODS, requested_by=people.researcher)
    assert (bakeoff.start, bakeoff.reward_model, bakeoff.status) == (bakeoff_world.v0, bakeoff_world.rm, "training")
    assert bakeoff.label_bound == Label.objects.latest("pk").pk
    candidates = {c.method: c for c in bakeoff.candidates.select_related("job")}
    assert list(candidates) == METHODS
    inputs = {method: c.job.params["inputs"] for method, c in candidates.items()}
    assert all(c.job.kind == Job.Kind.POLICY_UPDATE and c.job.round is None for c in candidates.values())
    assert {i["start_version"] for i in inputs.values()} == {0}
    assert inputs["ppo"]["reward_model"] == inputs["grpo"]["reward_model"] == 1
    assert inputs["ppo"]["prompt_ids"] == inputs["grpo"]["prompt_ids"]  # the same prompts for every sampler
    assert len(inputs["ppo"]["prompt_ids"]) == 3
    assert inputs["dpo"]["last_label_id"] == bakeoff.label_bound
    # The run's own method keeps the run's config; the others start from their defaults.
    assert candidates["ppo"].config["kl_coef"] == 0.123
    assert candidates["dpo"].config["beta"] == 0.1
    assert candidates["dpo"].config == candidates["dpo"].job.params["config"]

    # A label arriving later does not reach a candidate, and finishing candidates moves no head.
    labeling.submit_label(people.outsider, LabelInput(bakeoff_world.other_work[0].pk, "b"), require_lease=False)
    for number, method in enumerate(METHODS, start=1):
        publish(run, number, bakeoff_world.v0, method)
        finish(candidates[method].job, policy_version=number)
    run.refresh_from_db()
    assert run.head == bakeoff_world.v0
    versions = PolicyVersion.objects.filter(number__in=[1, 2, 3])
    assert {v.parent_id for v in versions} == {bakeoff_world.v0.pk}  # siblings
    bakeoff.refresh_from_db()
    assert bakeoff.status == BakeOff.Status.EVALUATING
    assert bakeoff.evaluation_job.params["reward_model"] == 1  # the pinned judge
    assert [c.version.number for c in bakeoff.candidates.all()] == [1, 2, 3]
    client.force_login(people.researcher)
    page = client.get(reverse("bakeoff_detail", args=[bakeoff.pk]))
    assert page.status_code == 200 and "Answering the evaluation prompts" in page.content.decode()
    assert page.context["games"] == 0 and page.context["rows"][0].strength is None
    version_page = client.get(reverse("version_detail", args=[2])).content.decode()
    assert reverse("bakeoff_detail", args=[bakeoff.pk]) in version_page and "a candidate" in version_page


def test_a_method_that_cannot_train_refuses_the_whole_bakeoff(base_run, base_policy, people):
    with pytest.raises(services.BakeOffError, match="needs a reward model"):
        services.start_bakeoff(base_run, ["ppo", "dpo"])
    with pytest.raises(ValueError, match="unknown method"):
        services.start_bakeoff(base_run, ["nonsense"])
    assert not BakeOff.objects.exists() and not Job.objects.exists()


def test_the_job_sweep_leaves_an_inline_bakeoffs_waiting_jobs_to_its_process(bakeoff_world):
    from training.services import job_recovery

    bakeoff = services.start_bakeoff(bakeoff_world.run, ["ppo", "dpo"], dispatch=BakeOff.Dispatch.INLINE)
    report = job_recovery.sweep_jobs(now=timezone.now() + timedelta(hours=1))
    assert report.resent == [] and report.broker_error == ""  # not even the broker was asked
    assert set(Job.objects.values_list("status", flat=True)) == {Job.Status.PENDING}
    assert all(c.job.params["inline"] for c in bakeoff.candidates.all())


def test_the_command_queues_the_candidates_or_says_why_not(bakeoff_world, django_capture_on_commit_callbacks):
    from django.core.management.base import CommandError

    with django_capture_on_commit_callbacks() as callbacks:
        call_command("start_bakeoff", "--run", bakeoff_world.run.name, "--methods", "dpo, sft_chosen", "--enqueue")
    bakeoff = BakeOff.objects.get()
    assert bakeoff.dispatch == BakeOff.Dispatch.QUEUE and len(callbacks) == 2  # each job sent once committed
    assert [c.method for c in bakeoff.candidates.all()] == ["dpo", "sft_chosen"]
    with pytest.raises(CommandError, match="unknown method"):
        call_command("start_bakeoff", "--run", bakeoff_world.run.name, "--methods", "dpo,telepathy")
    assert BakeOff.objects.count() == 1


def test_a_paused_run_holds_its_bakeoff_before_the_evaluation_until_it_resumes(bakeoff_world, people):
    bakeoff = services.start_bakeoff(bakeoff_world.run, ["dpo"])
    services.pause_runs(people.annotator, "looks wrong")
    publish(bakeoff_world.run, 1, bakeoff_world.v0, "dpo")
    finish(bakeoff.candidates.get().job, policy_version=1)
    bakeoff.refresh_from_db()
    assert (bakeoff.status, bakeoff.evaluation_job) == (BakeOff.Status.TRAINING, None)
    assert bakeoff.candidates.get().version.number == 1  # recorded all the same
    services.resume_runs([bakeoff_world.run])
    bakeoff.refresh_from_db()
    assert bakeoff.status == BakeOff.Status.EVALUATING and bakeoff.evaluation_job.kind == Job.Kind.EVALUATE


def test_an_inline_bakeoff_held_by_a_pause_is_handed_to_the_workers(bakeoff_world, people, monkeypatch):
    bakeoff = services.start_bakeoff(bakeoff_world.run, ["dpo"], dispatch=BakeOff.Dispatch.INLINE)
    services.pause_runs(people.annotator, "looks wrong")

    def train(job):  # what the worker leaves behind, without the model
        publish(bakeoff_world.run, 1, bakeoff_world.v0, "dpo")
        finish(job, policy_version=1)
        return job

    monkeypatch.setattr("training.services.bakeoffs.run_job_now", train)
    with pytest.raises(services.BakeOffError, match="run is paused"):
        services.run_bakeoff_here(bakeoff)
    bakeoff.refresh_from_db()
    assert (bakeoff.status, bakeoff.dispatch) == (BakeOff.Status.TRAINING, BakeOff.Dispatch.QUEUE)


def test_every_candidate_failing_fails_the_bakeoff(bakeoff_world):
    bakeoff = services.start_bakeoff(bakeoff_world.run, ["ppo", "dpo"])
    for candidate in bakeoff.candidates.all():
        finish(candidate.job, status=Job.Status.FAILED)
    bakeoff.refresh_from_db()
    assert bakeoff.status == BakeOff.Status.FAILED and "every candidate failed" in bakeoff.error
    assert bakeoff.evaluation_job is None


def test_comparisons_are_queued_after_the_evaluation_blind_shuffled_and_interleaved(judged_bakeoff, people, client):
    bakeoff = judged_bakeoff.bakeoff
    assert bakeoff.status == BakeOff.Status.JUDGING
    comparisons = list(bakeoff.comparisons.all())
    # Players v0, v1, v2 (GRPO failed): 3 pairs on each of the 4 evaluation prompts.
    assert len(comparisons) == 12 and {c.source for c in comparisons} == {Comparison.Source.BAKEOFF}
    pairs = {tuple(sorted(x.policy_version.number for x in c.completions.all())) for c in comparisons}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    assert {c.prompt_id for c in comparisons} == {p.pk for p in evaluation_prompts(judged_bakeoff.run)}
    # Shuffled: the lower-numbered version is not always on the left.
    left_is_older = {c.ordered_completions()[0].policy_version.number
                     < c.ordered_completions()[1].policy_version.number for c in comparisons}
    assert left_is_older == {True, False}
    # Interleaved with the work already waiting (priorities 0.2 and 0.8).
    priorities = [c.priority for c in comparisons]
    assert all(0.2 <= p <= 0.8 for p in priorities) and len(set(priorities)) == len(priorities)

    # Blind: what the annotator's browser gets names no version, method or candidate.
    client.force_login(people.annotator)
    served = []
    while (comparison := client.post(reverse("label_next")).json()["comparison"]) is not None:
        served.append(comparison["id"])
        text = json.dumps(comparison)
        assert not any(word in text.lower() for word in ("ppo", "grpo", "dpo", "candidate", "bake", "method",
                                                         "version", "policy"))
        assert not any(f"v{n}" in text for n in range(3))
        assert set(comparison["completions"][0]) == {"position", "html", "cut_off_at"}
        client.post(reverse("label_submit"), {"comparison_id": comparison["id"], "choice": "a"},
                    content_type="application/json")
    assert set(served) >= {c.pk for c in comparisons} | {c.pk for c in judged_bakeoff.other_work}
    # Their labels train nothing: the run's reward model and methods never see them.
    bakeoff_labels = Label.objects.filter(comparison__in=comparisons)
    assert bakeoff_labels.count() == 12
    assert not preference_labels(judged_bakeoff.run).filter(pk__in=bakeoff_labels).exists()
    assert preference_labels(judged_bakeoff.run).count() == 3  # the first label and the two of other work


def label(annotator, comparison: Comparison, winner: int | None) -> None:
    """Prefer version `winner`'s answer (None: a tie)."""
    if winner is None:
        choice = "tie"
    else:
        choice = "a" if comparison.ordered_completions()[0].policy_version.number == winner else "b"
    labeling.submit_label(annotator, LabelInput(comparison.pk, choice), require_lease=False)


def comparisons_between(bakeoff: BakeOff, one: int, other: int) -> list[Comparison]:
    return [c for c in bakeoff.comparisons.order_by("pk")
            if sorted(x.policy_version.number for x in c.completions.all()) == [one, other]]


def test_the_page_ranks_candidates_by_people_with_values_worked_out_by_hand(judged_bakeoff, people, client):
    bakeoff = judged_bakeoff.bakeoff
    # Two comparisons of each pair are judged (the rest wait): v1 beats v0 twice; v2 and
    # v0 win one each; v1 beats v2 once and ties once.
    for (one, other), winners in {(0, 1): [1, 1], (0, 2): [2, 0], (1, 2): [1, None]}.items():
        for comparison, winner in zip(comparisons_between(bakeoff, one, other), winners, strict=False):
            label(people.annotator, comparison, winner)
    robot = type(people.annotator).objects.create_user("oracle-bot", password=None)
    for comparison in comparisons_between(bakeoff, 0, 2):  # a simulated annotator does not count
        labeling.submit_label(robot, LabelInput(comparison.pk, "a"), origin=Label.Origin.SIMULATED,
                              require_lease=False)

    PolicyVersion.objects.filter(number=2).update(kl_to_base=0.125, kl_to_base_stderr=0.01)  # dpo's, measured

    client.force_login(people.researcher)
    response = client.get(reverse("bakeoff_detail", args=[bakeoff.pk]))
    assert response.status_code == 200
    page = response.context
    assert page["games"] == 6
    rows = {row.candidate.method: row for row in page["rows"]}
    assert [row.candidate.method for row in page["rows"]] == ["ppo", "dpo", "grpo"]  # failed one last

    # Win rates against the start, ties half, Wilson z = 1.96 (z² = 3.8415, n = 2):
    # v1 2–0–0: p = 1, centre (1 + 0.9604)/(1 + 1.9207) = 0.6712, half-width
    # 1.96·sqrt(0 + 3.8415/16)/2.9207 = 0.3288 → [0.3424, 1].
    # v2 1–0–1: p = 0.5, centre 0.5, half-width 1.96·sqrt(0.125 + 0.2401)/2.9207 = 0.4054 → [0.0946, 0.9054].
    ppo, dpo = rows["ppo"].vs_start, rows["dpo"].vs_start
    assert (ppo.wins, ppo.ties, ppo.losses, ppo.rate) == (2, 0, 0, 1.0)
    assert (ppo.low, ppo.high) == (pytest.approx(0.3424, abs=1e-4), 1.0)
    assert (dpo.wins, dpo.ties, dpo.losses, dpo.rate) == (1, 0, 1, 0.5)
    assert (dpo.low, dpo.high) == (pytest.approx(0.0946, abs=1e-4), pytest.approx(0.9054, abs=1e-4))
    html = response.content.decode()
    assert "1.00 [0.34, 1.00] (2–0–0)" in html and "0.50 [0.09, 0.91] (1–0–1)" in html

    # Bradley–Terry with the N(0, 10) prior, v0 fixed at 0: at the maximum each free
    # score a, b (v1, v2) satisfies Σ (outcome − σ(own − other)) − own/10 = 0:
    #   v1: (1 − σ(a))·2 + (1 − σ(a − b)) + (0.5 − σ(a − b)) − a/10 = 0
    #   v2: (1 − σ(b)) + (0 − σ(b)) + (0 − σ(b − a)) + (0.5 − σ(b − a)) − b/10 = 0
    # and the 95% interval is score ± 1.96·sqrt of the diagonal of the inverse of the
    # information matrix [[2σ'(a) + 2σ'(a−b) + 0.1, −2σ'(a−b)], [−2σ'(a−b), 2σ'(b) + 2σ'(a−b) + 0.1]],
    # σ' = σ(1 − σ).
    import math

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    def slope(x):
        return sigmoid(x) * (1 - sigmoid(x))

    a, b = rows["ppo"].strength.score, rows["dpo"].strength.score
    assert 2 * (1 - sigmoid(a)) + 1.5 - 2 * sigmoid(a - b) - a / 10 == pytest.approx(0, abs=1e-8)
    assert 1 - 2 * sigmoid(b) + 0.5 - 2 * sigmoid(b - a) - b / 10 == pytest.approx(0, abs=1e-8)
    assert a > 0 and a > b  # v1 on top
    h11, h22, h12 = 2 * slope(a) + 2 * slope(a - b) + 0.1, 2 * slope(b) + 2 * slope(a - b) + 0.1, -2 * slope(a - b)
    determinant = h11 * h22 - h12 * h12
    assert rows["ppo"].strength.high - a == pytest.approx(1.959964 * math.sqrt(h22 / determinant), abs=1e-6)
    assert rows["dpo"].strength.high - b == pytest.approx(1.959964 * math.sqrt(h11 / determinant), abs=1e-6)
    assert rows["grpo"].strength is None and rows["grpo"].version is None

    # Reward-model means (see judged_bakeoff), compute time.
    assert rows["ppo"].rm_mean_score == pytest.approx(0.5) and rows["dpo"].rm_mean_score == pytest.approx(-0.2)
    assert page["start_rm_mean_score"] == 0.0
    # KL: measured by the evaluation where it was (dpo), else the method's log (ppo).
    assert rows["ppo"].kl == KlToBase(value=0.04, stderr=None, measured=False)
    assert rows["dpo"].kl == KlToBase(value=0.125, stderr=0.01, measured=True)
    assert page["start_kl"].value == 0.0  # the start is the base
    assert "0.040 <span class=\"muted\">(logged)</span>" in html and "0.125 ± 0.010" in html
    assert rows["ppo"].seconds == pytest.approx(90, abs=1) and "1 min 30 s" in html
    assert "RuntimeError: out of memory" in html  # the failed candidate, shown failed

    chart = page["charts"]["bakeoff-strengths"]["data"][0]
    assert chart["x"] == ["v0", "v1", "v2"] and chart["y"][1] == pytest.approx(a)
    assert [v.number for v in page["shown_versions"]] == [0, 1, 2] and len(page["evaluation"]) == 4
    assert html.count("Promote to head") == 2

    # The same judgements rank the candidates among the run's versions on /progress/.
    ranking = run_ranking(judged_bakeoff.run)
    assert ranking.games == 6 and ranking.anchor == "v0"
    assert {s.player: s.score for s in ranking.strengths} == {"v0": 0.0, "v1": pytest.approx(a),
                                                                 "v2": pytest.approx(b)}
    assert head_to_head(version_games([judged_bakeoff.run]), 1, 0).wins == 2


def test_promotion_moves_the_head_and_nothing_else(judged_bakeoff, people, client, tmp_path):
    other = services.create_run("other", str(tmp_path / "other-model"))
    label(people.annotator, judged_bakeoff.bakeoff.comparisons.first(), None)

    def snapshot():
        return {
            "versions": list(PolicyVersion.objects.order_by("pk").values()),
            "runs": list(Run.objects.order_by("pk").values()),
            "rounds": Round.objects.count(), "jobs": list(Job.objects.order_by("pk").values("pk", "status")),
            "comparisons": Comparison.objects.count(), "labels": Label.objects.count(),
            "completions": Completion.objects.count(), "bakeoffs": BakeOff.objects.count(),
        }

    before = snapshot()
    dpo = judged_bakeoff.bakeoff.candidates.get(method="dpo")
    client.force_login(people.researcher)
    response = client.post(reverse("promote_candidate", args=[dpo.pk]))
    assert response.status_code == 302
    after = snapshot()
    run = Run.objects.get(pk=judged_bakeoff.run.pk)
    assert run.head.number == 2
    changed_runs = [b for b, a in zip(before["runs"], after["runs"], strict=True) if a != b]
    assert [{**r, "head_id": run.head_id} for r in changed_runs] == [
        next(a for a in after["runs"] if a["id"] == run.pk)]  # only the head of this run moved
    assert Run.objects.get(pk=other.pk).head == other.base_version
    assert {k: v for k, v in before.items() if k != "runs"} == {k: v for k, v in after.items() if k != "runs"}
    judged_bakeoff.bakeoff.refresh_from_db()
    assert judged_bakeoff.bakeoff.promoted == dpo

    grpo = judged_bakeoff.bakeoff.candidates.get(method="grpo")
    response = client.post(reverse("promote_candidate", args=[grpo.pk]), follow=True)
    assert "Not promoted" in response.content.decode()
    assert Run.objects.get(pk=run.pk).head.number == 2


def test_bakeoff_pages_and_actions_are_for_staff_only(judged_bakeoff, people, client):
    bakeoff = judged_bakeoff.bakeoff
    candidate = bakeoff.candidates.get(method="ppo")
    urls = [("get", reverse("bakeoff_detail", args=[bakeoff.pk]), {}),
            ("post", reverse("start_bakeoff", args=[judged_bakeoff.run.pk]), {"methods": ["dpo"]}),
            ("post", reverse("promote_candidate", args=[candidate.pk]), {})]
    for method, url, data in urls:
        response = getattr(client, method)(url, data)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    for person in (people.annotator, people.outsider):
        client.force_login(person)
        for method, url, data in urls:
            assert getattr(client, method)(url, data).status_code == 403, url
    assert BakeOff.objects.count() == 1 and Run.objects.get(pk=judged_bakeoff.run.pk).head.number == 0


def test_the_run_page_starts_one_and_links_it(bakeoff_world, people, client):
    client.force_login(people.researcher)
    run_page = reverse("run_detail", args=[bakeoff_world.run.pk])
    html = client.get(run_page).content.decode()
    assert 'id="start-bakeoff"' in html and 'value="sft_chosen"' in html
    response = client.post(reverse("start_bakeoff", args=[bakeoff_world.run.pk]), {"methods": ["dpo", "sft_chosen"]})
    bakeoff = BakeOff.objects.get()
    assert response["Location"] == reverse("bakeoff_detail", args=[bakeoff.pk])
    assert bakeoff.created_by == people.researcher and bakeoff.candidates.count() == 2
    assert reverse("bakeoff_detail", args=[bakeoff.pk]) in client.get(run_page).content.decode()
    response = client.post(reverse("start_bakeoff", args=[bakeoff_world.run.pk]), {}, follow=True)
    assert "No bake-off started" in response.content.decode() and BakeOff.objects.count() == 1


def test_hostile_model_output_renders_inert(judged_bakeoff, people, client):
    sample = EvaluationSample.objects.filter(policy_version__number=1).first()
    sample.completion.text = 'Try <script>alert("x")</script><img src=x onerror=alert(1)> this'
    sample.completion.save()
    client.force_login(people.researcher)
    html = client.get(reverse("bakeoff_detail", args=[judged_bakeoff.bakeoff.pk])).content.decode()
    assert "<img" not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert" in html


@pytest.mark.slow
def test_the_command_trains_sibling_candidates_on_the_tiny_model(tiny_base, people, make_comparison, settings,
                                                                 tmp_path):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PREFLOOP_EVAL_PROMPTS = 2
    run = tiny_base.run
    for i in range(8):  # preference pairs for DPO and SFT on chosen answers
        comparison = make_comparison(texts=(f"Sure, {i} apples.", f"I cannot say {i}."), seed=i)
        left = comparison.ordered_completions()[0].text
        labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a" if left.startswith("Sure") else "b"),
                              require_lease=False)
    call_command("start_bakeoff", "--run", run.name, "--methods", "dpo,sft_chosen")
    bakeoff = BakeOff.objects.get()
    assert bakeoff.status == BakeOff.Status.JUDGING, bakeoff.error
    versions = [c.version for c in bakeoff.candidates.all()]
    assert [v.method for v in versions] == ["dpo", "sft_chosen"] and all(v.parent == tiny_base for v in versions)
    assert {v.inputs["last_label_id"] for v in versions} == {bakeoff.label_bound}
    # v0 and both candidates answered the 2 evaluation prompts: 3 pairs on each.
    assert EvaluationSample.objects.count() == 6 and bakeoff.comparisons.count() == 6
    run.refresh_from_db()
    assert run.head == tiny_base


def test_the_api_starts_reads_and_promotes(judged_bakeoff, bakeoff_world, people, client):
    from api.services import create_token

    key = create_token(people.researcher, "pipeline")[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    body = client.get(f"/api/v1/bakeoffs/{judged_bakeoff.bakeoff.pk}", **auth).json()
    assert body["status"] == "judging" and body["start_version"] == 0 and body["comparisons"] > 0
    by_method = {c["method"]: c for c in body["candidates"]}
    assert by_method["ppo"]["version"] == 1 and by_method["grpo"]["version"] is None

    response = client.post(f"/api/v1/bakeoffs/candidates/{by_method['grpo']['id']}/promote", **auth)
    assert response.status_code == 400 and "no version" in response.json()["error"]
    response = client.post(f"/api/v1/bakeoffs/candidates/{by_method['ppo']['id']}/promote", **auth)
    assert response.status_code == 200 and response.json()["promoted"] == by_method["ppo"]["id"]
    bakeoff_world.run.refresh_from_db()
    assert bakeoff_world.run.head.number == 1

    started = client.post(f"/api/v1/bakeoffs/runs/{bakeoff_world.run.pk}", {"methods": ["dpo", "sft_chosen"]},
                          content_type="application/json", **auth)
    assert started.status_code == 201, started.content
    assert [c["method"] for c in started.json()["candidates"]] == ["dpo", "sft_chosen"]
    assert started.json()["start_version"] == 1
    refused = client.post(f"/api/v1/bakeoffs/runs/{bakeoff_world.run.pk}", {"methods": ["no-such"]},
                          content_type="application/json", **auth)
    assert refused.status_code == 400
