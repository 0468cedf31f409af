"""The whole online loop, unattended, through real Celery workers: initial 4-way
comparisons, a scripted oracle ranks them, two full rounds (reward model → PPO → new comparisons),
the oracle labels the new comparisons in between."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from django.db import connection

from labeling.models import Comparison, Label, Prompt
from labeling.services import next_comparison_for
from labeling.simulation import simulate_labels
from tests.processes import running_celery_worker, running_redis, wait_for
from training import services
from training.games import newest_judge
from training.ml.generation import SamplingConfig, iter_sample_batches
from training.ml.loading import load_policy
from training.ml.tiny_model import build_tiny_model
from training.models import EvaluationPrompt, EvaluationSample, Job, PolicyVersion, RewardScore, Round

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROMPTS = 96
EVALUATION_PROMPTS = 16  # held out of comparisons and PPO (PREFLOOP_EVAL_PROMPTS)
LABELED_PROMPTS = PROMPTS - EVALUATION_PROMPTS
INITIAL_PASSES = 6
COMPARISON_PROMPTS = 32  # per round


@pytest.fixture
def steerable_policy_dir(tmp_path, gguf_tokenizer) -> Path:
    """A tiny policy that favours a few tokens per context, so a keyword it says about
    half the time is a preference PPO can act on in a few steps."""
    return build_tiny_model(tmp_path / "steerable", gguf_tokenizer, output_scale=22)


def wait_for_round(round_: Round, log_path: Path) -> Round:
    def done():
        round_.refresh_from_db()
        return round_.status != Round.Status.RUNNING

    wait_for(done, 600, f"{round_}", interval=1)
    assert round_.status == Round.Status.SUCCEEDED, f"{round_.error}\n{log_path.read_text()[-4000:]}"
    return round_


def half_time_keyword(texts: list[str]) -> str:
    """The word that appears in closest to half of the texts: the oracle's preference
    then splits about half of all pairs, the most informative case."""
    counts = Counter(word for text in texts for word in set(text.split()))
    return min(counts, key=lambda word: abs(counts[word] / len(texts) - 0.5))


def policy_samples(policy: PolicyVersion, prompts: list[Prompt]) -> list[tuple]:
    """Two answers per prompt from a version, at a fixed seed: (messages, text, ended, token ids)."""
    model, tokenizer = load_policy(policy.base_model_dir, policy.adapter_dir or None)
    config = SamplingConfig(max_new_tokens=16, temperature=0.7, batch_size=64, seed=1234)
    pairs = [pair for batch in iter_sample_batches(model, tokenizer, [p.messages for p in prompts], 2, config)
             for pair in batch]
    return [(prompt.messages, s.text, s.ended, s.token_ids) for prompt, pair in zip(prompts, pairs, strict=True)
            for s in pair]


def mean_reward(scorer, samples: list[tuple]) -> float:
    """The reward model's mean score of a policy's samples."""
    return scorer.score(samples).mean().item()


def oracle_rate(oracle: str, samples: list[tuple]) -> float:
    """The oracle's own view: how often the policy's samples say its keyword."""
    from labeling.oracles import oracle_named

    score = oracle_named(oracle)
    return round(sum(score(text) > 0 for _, text, _, _ in samples) / len(samples), 3)


def test_two_full_rounds_close_the_loop(tmp_path, steerable_policy_dir, people, settings):
    # Sampling settings are pinned by the jobs, which this process requests.
    settings.PREFLOOP_MAX_NEW_TOKENS, settings.PREFLOOP_TEMPERATURE = 16, 0.7
    settings.PREFLOOP_GENERATION_BATCH_SIZE, settings.PREFLOOP_OVERLAP_SHARE = 32, 0.0
    log_path = tmp_path / "worker.log"
    run = services.create_run("loop", str(steerable_policy_dir))  # PPO, the rlhf recipe
    run.update_prompts, run.comparison_prompts, run.reward_auto_train_labels = PROMPTS, COMPARISON_PROMPTS, 0
    # Full fine-tuning learns the tiny model's keyword preference sharply (LoRA reaches
    # about 70% here); a sharp reward model is what lets a few PPO updates climb it.
    run.reward_config.update(use_lora=False, learning_rate=0.001, epochs=2, ensemble_size=2)
    run.method_config.update(total_episodes=192, batch_size=16, response_length=16, learning_rate=0.001)
    run.save()
    base = run.base_version
    prompts = [Prompt.objects.create(messages=[{"role": "user", "content": f"Question {i}?"}]) for i in range(PROMPTS)]
    env = {
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "PREFLOOP_VAR_DIR": str(tmp_path / "var"),
        "PREFLOOP_BASE_MODEL_DIR": str(steerable_policy_dir),
        "PREFLOOP_TORCH_THREADS": "2",
        "PREFLOOP_OVERLAP_SHARE": "0",  # the worker makes the comparisons: one label each, as counted below
    }
    with running_redis(os.environ["REDIS_URL"], tmp_path), running_celery_worker("gpu,train,default", env, log_path):
        # Six pairs per prompt: with a keyword said half the time, half of them carry a
        # preference (the rest are ties, which train nothing): enough to steer by.
        initial = [services.request_generation(run, base, PROMPTS) for _ in range(INITIAL_PASSES)]
        wait_for(lambda: all(j.is_finished for j in Job.objects.filter(pk__in=[j.pk for j in initial])), 300,
                 "initial comparisons", interval=1)
        assert not Job.objects.filter(pk__in=[j.pk for j in initial]).exclude(status=Job.Status.SUCCEEDED).exists()
        word = half_time_keyword(list(base.completions.values_list("text", flat=True)))
        oracle = f"keyword:{word}"
        assert simulate_labels(oracle, noise=0.1, count=10_000, seed=0) == LABELED_PROMPTS * INITIAL_PASSES

        rounds = []
        for number in (1, 2):
            round_ = wait_for_round(services.start_round(run, "rlhf", requested_by=people.researcher), log_path)
            rounds.append(round_)
            new_comparisons = Comparison.objects.filter(items__completion__policy_version=round_.policy_after)
            # new-vs-new, and new-vs-each of previous and base (one for round 1, whose previous is the base)
            assert new_comparisons.distinct().count() == COMPARISON_PROMPTS * (2 if number == 1 else 3)
            if number == 1:
                # Active query selection: the queue serves the new comparisons most-disagreed first.
                queue_order = [next_comparison_for(people.annotator).pk]
                best = max(new_comparisons.distinct(), key=lambda c: c.priority)
                assert queue_order[0] == best.pk and best.priority > 0
                assert len({c.priority for c in new_comparisons.distinct()}) > 10
                simulate_labels(oracle, noise=0.1, count=10_000, seed=number)

    assert [r.policy_after.number for r in rounds] == [1, 2]
    assert [r.reward_model.number for r in rounds] == [1, 2]
    assert rounds[1].reward_model.label_count > rounds[0].reward_model.label_count
    # All initial comparisons, and round 1's but the one leased to the annotator.
    assert Label.objects.filter(origin=Label.Origin.SIMULATED).count() == (
        LABELED_PROMPTS * INITIAL_PASSES + COMPARISON_PROMPTS * 2 - 1)

    # Each round ended with an evaluation: every version answered the same 16 prompts
    # once, and the latest reward model scored all of the answers.
    evaluation = EvaluationPrompt.objects.count()
    assert evaluation == EVALUATION_PROMPTS
    for number in (0, 1, 2):
        assert EvaluationSample.objects.filter(policy_version__number=number).count() == evaluation
    assert RewardScore.objects.filter(reward_model=rounds[1].reward_model).count() == 3 * evaluation
    assert newest_judge(run).number == 2

    for round_ in rounds:
        history = round_.policy_after.metrics["history"]
        kls = [h["ppo/kl"] for h in history if "ppo/kl" in h]
        assert kls and kls[-1] > 0, "PPO never moved away from the reference"
        for key in ("ppo/reward", "ppo/entropy", "ppo/clip_fraction", "ppo/value_loss"):
            assert all(torch.isfinite(torch.tensor(h[key])) for h in history if key in h), key

    # What PPO optimizes, judged by the reward model on the same prompts and seed: round
    # 1 against its own reward model, and the loop as a whole (v2 against the base)
    # under the latest one. (Round 2 alone starts from an already-moved policy and is
    # printed, not asserted: on a tiny model its step is within the noise.)
    first, second = rounds
    v0, v1, v2 = (PolicyVersion.objects.get(number=n) for n in (0, 1, 2))
    first_scorer, latest_scorer = services.load_scorer(first.reward_model), services.load_scorer(second.reward_model)
    samples = {v.number: policy_samples(v, prompts) for v in (v0, v1, v2)}
    round1 = mean_reward(first_scorer, samples[0]), mean_reward(first_scorer, samples[1])
    loop = mean_reward(latest_scorer, samples[0]), mean_reward(latest_scorer, samples[2])
    round2 = mean_reward(latest_scorer, samples[1]), loop[1]
    keyword_rate = {number: oracle_rate(oracle, texts) for number, texts in samples.items()}
    print(f"round 1 under RM1: {round1[0]:.3f} -> {round1[1]:.3f}; round 2 under RM2: {round2[0]:.3f} -> "
          f"{round2[1]:.3f}; v0 -> v2 under RM2: {loop[0]:.3f} -> {loop[1]:.3f}; oracle {oracle!r} rate "
          f"{keyword_rate}; reward-model accuracy {first.reward_model.heldout_accuracy:.2f}, "
          f"{second.reward_model.heldout_accuracy:.2f}; evaluation win rate v2 vs v0 under RM2 "
          f"{newest_judge(run).head_to_head(2, 0)}")
    print("job seconds:", [(job.kind, round((job.finished_at - job.started_at).total_seconds()))
                           for job in Job.objects.order_by("pk") if job.started_at and job.finished_at])
    assert round1[1] > round1[0], f"round 1 lowered its own reward: {round1}"
    assert loop[1] > loop[0], f"two rounds did not raise the reward of the base policy's samples: {loop}"
