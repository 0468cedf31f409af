"""A small history of the loop, built through the services, for the progress-page tests:
one finished round of the default run that produced v1 (by PPO), people's labels on v1-vs-v0 comparisons (and a
simulated annotator who disagrees with them, to show it is left out), two people
overlapping on some comparisons, and evaluation answers scored by reward model v1."""

from __future__ import annotations

import random
from types import SimpleNamespace

from django.contrib.auth import get_user_model

from labeling import services as labeling
from labeling.models import Completion, Label, Prompt
from labeling.services import LabelInput, create_comparison
from training import services
from training.ml.generation import Sample, SamplingConfig
from training.models import EvaluationSample, Job, PolicyVersion, RewardModelVersion, RewardScore
from training.services.evaluation import evaluation_prompts, store_evaluation_samples

PPO_HISTORY = [
    {"step": 1, "ppo/reward": -0.2, "ppo/kl": 0.0, "ppo/entropy": 2.5},
    {"step": 2, "ppo/reward": 0.1, "ppo/kl": 0.03, "ppo/entropy": 2.4},
    {"step": 3, "ppo/reward": 0.4, "ppo/kl": 0.07, "ppo/entropy": 2.2},
]
# v1's answers beat v0's on 3 of the 4 evaluation prompts under reward model v1.
EVALUATION_SCORES = {0: [0.0, 0.2, -0.1, 0.5], 1: [0.6, 0.9, 0.3, 0.1]}


def finish(job: Job, **result) -> None:
    job.status = Job.Status.SUCCEEDED
    job.result = result
    job.save()
    services.announce_finished(job)


def judge_cross_version(annotator, comparison, prefers: int | None, origin: str = Label.Origin.HUMAN) -> None:
    """Label a v1-vs-v0 comparison: prefer version `prefers`, or tie when None."""
    if prefers is None:
        choice = "tie"
    else:
        left = comparison.ordered_completions()[0]
        choice = "a" if left.policy_version.number == prefers else "b"
    labeling.submit_label(annotator, LabelInput(comparison.pk, choice, active_seconds=5.0), origin=origin,
                          require_lease=False)


def build(people, base_policy, settings, tmp_path) -> SimpleNamespace:
    settings.PREFLOOP_EVAL_PROMPTS = 4
    run = base_policy.run
    run.comparison_prompts = 2
    run.save()
    users = get_user_model().objects
    bea = users.create_user("bea", password="pw-bea-123")
    robot = users.create_user("oracle-bot", password=None)
    rm1 = RewardModelVersion.objects.create(number=1, run=run, base_model_dir=base_policy.base_model_dir,
                                            weights_dir=str(tmp_path / "rm1"), label_count=40, heldout_pairs=8,
                                            heldout_accuracy=0.625)
    # 16 prompts: a quarter of them (4) become the evaluation set.
    prompts = [Prompt.objects.create(messages=[{"role": "user", "content": f"Question {i}?"}]) for i in range(16)]
    # A label with a preference, so a round may start (it is not a cross-version one).
    seed_prompt = Prompt.objects.create(messages=[{"role": "user", "content": "Seed question?"}])
    seed_answers = [Completion.objects.create(prompt=seed_prompt, policy_version=base_policy, text=t)
                    for t in ("one", "two")]
    seed = create_comparison(run, seed_prompt, seed_answers, source="initial", rng=random.Random(1))
    labeling.submit_label(robot, LabelInput(seed.pk, "a"), origin=Label.Origin.SIMULATED, require_lease=False)

    # Round 1 walks its stages; the policy-update stage publishes v1 (PPO) with its curves.
    round_ = services.start_round(run, "direct", requested_by=people.researcher)
    v1 = PolicyVersion.objects.create(number=1, run=run, parent=base_policy, method="ppo",
                                      base_model_dir=base_policy.base_model_dir, adapter_dir=str(tmp_path / "v1"),
                                      config={"kl_coef": 0.05, "batch_size": 8}, inputs={"reward_model": 1},
                                      metrics={"history": PPO_HISTORY, "seconds": 12.5, "examples": 24})
    finish(round_.jobs.get(kind=Job.Kind.POLICY_UPDATE), policy_version=1, reward_model=1)
    finish(round_.jobs.get(kind=Job.Kind.GENERATE))

    # Evaluation answers of both versions (the model-free part of the evaluation job),
    # scored as reward model v1 would.
    chosen = evaluation_prompts(run)
    config = SamplingConfig(seed=0)
    for version in (base_policy, v1):
        answers = [Sample(f"v{version.number} answers {p.text}", True, 5) for p in chosen]
        store_evaluation_samples(round_.jobs.first(), version, chosen, answers, config)
        samples = EvaluationSample.objects.filter(policy_version=version).order_by("prompt__content_hash")
        for sample, score in zip(samples, EVALUATION_SCORES[version.number], strict=True):
            RewardScore.objects.create(reward_model=rm1, completion=sample.completion, score=score)
    finish(round_.jobs.get(kind=Job.Kind.EVALUATE), answered=8, scored=8)

    # Ten v1-vs-v0 comparisons: ann prefers v1 on 8, v0 on 1, ties 1; the simulated
    # annotator prefers v0 on all of them (and must not count). Bea overlaps ann on the
    # first two: agrees on one, disagrees on the other.
    rng = random.Random(0)
    comparisons = []
    for prompt in prompts[6:]:
        pair = [Completion.objects.create(prompt=prompt, policy_version=v, text=f"v{v.number} on {prompt.text}")
                for v in (v1, base_policy)]
        comparisons.append(create_comparison(run, prompt, pair, source="cross_version", rng=rng))
    for i, comparison in enumerate(comparisons):
        judge_cross_version(people.annotator, comparison, prefers=1 if i < 8 else (0 if i == 8 else None))
        judge_cross_version(robot, comparison, prefers=0, origin=Label.Origin.SIMULATED)
    judge_cross_version(bea, comparisons[0], prefers=1)
    judge_cross_version(bea, comparisons[1], prefers=0)
    return SimpleNamespace(run=run, v0=base_policy, v1=v1, rm1=rm1, round=round_, bea=bea, robot=robot,
                           comparisons=comparisons, eval_prompts=chosen)
