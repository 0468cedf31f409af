from __future__ import annotations

import pytest
import torch
from django.core.management import call_command

from labeling.models import Comparison, Completion, Prompt
from training import services
from training.ml.base_model import BaseModelError, prepare_base_model
from training.ml.generation import NucleusDraw, SamplingConfig, decode_sample, iter_sample_batches
from training.ml.loading import load_policy
from training.models import Job, PolicyVersion

CONVERSATIONS = [
    [{"role": "user", "content": "Name a fruit."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "Count to three."}],
]


def test_batched_sampling_returns_samples_per_prompt_in_order(tiny_model_dir):
    model, tokenizer = load_policy(tiny_model_dir)
    config = SamplingConfig(max_new_tokens=6, batch_size=2, seed=3)
    batches = list(iter_sample_batches(model, tokenizer, CONVERSATIONS, 2, config))
    assert [len(b) for b in batches] == [2, 1]  # three prompts in batches of two
    samples = [s for batch in batches for s in batch]
    assert all(len(pair) == 2 for pair in samples)
    assert all(0 < s.num_tokens <= 6 or (s.ended and s.num_tokens == 0) for pair in samples for s in pair)
    again = [s for batch in iter_sample_batches(model, tokenizer, CONVERSATIONS, 2, config) for s in batch]
    assert again == samples  # the seed makes a run repeatable


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 50, 0.95), (1.3, 6, 0.8), (1.0, 0, 0.5)])
def test_the_draw_has_the_distribution_of_transformers_own_sampling(temperature, top_k, top_p):
    """NucleusDraw must draw from exactly what transformers' temperature, top-k and
    top-p warpers leave (then softmax and multinomial), only faster."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    vocab, draws = 40, 40_000
    logits = torch.randn(1, vocab) * 2
    hf = LogitsProcessorList([TemperatureLogitsWarper(temperature), *([TopKLogitsWarper(top_k)] if top_k else []),
                              TopPLogitsWarper(top_p)])
    expected = hf(None, logits.clone()).softmax(-1)[0]
    draw = NucleusDraw(temperature, top_k, top_p)
    tokens = torch.cat([draw(None, logits.expand(1000, vocab).clone()).argmax(-1) for _ in range(draws // 1000)])
    observed = torch.bincount(tokens, minlength=vocab) / draws
    assert set(observed.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (observed - expected).abs().max() < 0.015, (observed, expected)


def test_decode_stops_at_eos_and_marks_ended(gguf_tokenizer):
    eos = gguf_tokenizer.eos_token_id
    words = gguf_tokenizer("hello world", add_special_tokens=False)["input_ids"]
    ended = decode_sample(torch.tensor([*words, eos, *words]), gguf_tokenizer, eos)
    assert (ended.text, ended.ended, ended.num_tokens) == ("hello world", True, len(words))
    cut = decode_sample(torch.tensor(words), gguf_tokenizer, eos)
    assert (cut.text, cut.ended) == ("hello world", False)


@pytest.mark.django_db
def test_any_local_hf_model_dir_can_be_the_base(settings, tiny_model_dir, tmp_path):
    settings.PREFLOOP_BASE_MODEL_DIR = tiny_model_dir
    run = services.ensure_default_run()
    policy = run.base_version
    assert (run.name, policy.number, policy.base_model_dir, run.head) == ("default", 0, str(tiny_model_dir), policy)
    assert run.method == "ppo" and run.method_config["kl_coef"] == settings.PREFLOOP_PPO_KL_COEF  # env defaults
    assert services.ensure_default_run() == run  # a second call reuses it
    settings.PREFLOOP_BASE_MODEL_DIR = tmp_path / "not-a-model"
    with pytest.raises(BaseModelError, match="no config.json"):
        services.ensure_default_run()


@pytest.fixture
def tiny_policy(db, tiny_model_dir, settings):
    settings.PREFLOOP_MAX_NEW_TOKENS = 8
    settings.PREFLOOP_GENERATION_BATCH_SIZE = 2
    settings.PREFLOOP_OVERLAP_SHARE = 0.0
    settings.PREFLOOP_EVAL_PROMPTS = 0  # all five prompts for sampling (test_evaluation_set.py holds some out)
    for i in range(5):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Question {i}?"}])
    return services.create_run("default", str(tiny_model_dir)).base_version


def generate(policy: PolicyVersion, prompt_count: int, samples: int = 2) -> Job:
    return services.run_job_now(services.create_generation_job(policy.run, policy, prompt_count, samples=samples))


def test_generation_job_queues_one_comparison_per_prompt(tiny_policy):
    job = generate(tiny_policy, prompt_count=3, samples=2)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.step, job.total_steps, job.result) == (3, 3, {"comparisons": 3, "prompts": 3})
    comparisons = Comparison.objects.all()
    assert comparisons.count() == 3
    assert {c.prompt_id for c in comparisons} == set(job.params["prompt_ids"])
    for comparison in comparisons:
        completions = comparison.ordered_completions()
        assert len(completions) == 2 and all(c.policy_version == tiny_policy for c in completions)
        assert completions[0].generation_settings["max_new_tokens"] == 8
    assert comparisons[0].source == Comparison.Source.INITIAL
    assert all(c.run == tiny_policy.run for c in comparisons)
    assert job.params["sampling"]["max_new_tokens"] == 8 and job.params["sampling"]["seed"] == job.pk  # pinned


def test_next_job_prefers_prompts_without_samples(tiny_policy):
    first = generate(tiny_policy, prompt_count=3)
    second = services.create_generation_job(tiny_policy.run, tiny_policy, prompt_count=2)
    assert set(second.params["prompt_ids"]).isdisjoint(first.params["prompt_ids"])


def test_a_resumed_job_does_not_sample_prompts_it_already_covered(tiny_policy):
    job = generate(tiny_policy, prompt_count=4)
    # As if the worker died after finishing: the redelivered message runs it again.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    job.refresh_from_db()
    services.run_job_now(job)
    assert Comparison.objects.count() == 4


def test_a_generation_cancelled_after_its_last_batch_stores_no_comparison(tiny_policy, people, monkeypatch):
    """Scoring priorities (a reward model over every candidate) comes after the last
    batch: a cancel then is still honoured when the comparisons would be stored."""
    import training.services.generation as generation

    job = services.create_generation_job(tiny_policy.run, tiny_policy, 3, samples=2)
    prioritize = generation.query_priorities

    def cancel_while_prioritizing(*args, **kwargs):
        services.cancel_job(Job.objects.get(pk=job.pk), people.researcher)
        return prioritize(*args, **kwargs)

    monkeypatch.setattr(generation, "query_priorities", cancel_while_prioritizing)
    job = services.run_job_now(job)
    assert job.status == Job.Status.CANCELLED and job.error == "cancelled by rita; stopped at step 3 of 3"
    assert not Comparison.objects.exists() and not Completion.objects.exists()


def test_a_failed_generation_is_recorded_with_its_error(tiny_policy, tmp_path):
    tiny_policy.base_model_dir = str(tmp_path / "missing")
    tiny_policy.save()
    job = generate(tiny_policy, prompt_count=2)
    assert job.status == Job.Status.FAILED
    assert "missing" in job.error
    assert not Completion.objects.exists()


def test_generate_comparisons_command_runs_in_process(tiny_policy, capsys):
    call_command("generate_comparisons", "--policy", "0", "--prompts", "2")
    assert Comparison.objects.count() == 2
    assert "Created 2 comparisons" in capsys.readouterr().out


@pytest.mark.slow
def test_smollm2_gguf_converts_to_a_plain_hf_model_that_generates(tmp_path):
    from transformers import AutoConfig

    out = prepare_base_model(tmp_path / "smollm2", convert_smollm2_if_missing=True)
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert prepare_base_model(out, convert_smollm2_if_missing=True) == out  # reused, not converted again
    model, tokenizer = load_policy(out)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    [[sample]] = next(iter_sample_batches(
        model, tokenizer, [[{"role": "user", "content": "What is 2+2?"}]], 1, SamplingConfig(max_new_tokens=24,
                                                                                            temperature=0)))
    assert "4" in sample.text


@pytest.mark.django_db
def test_the_base_cannot_change_under_existing_completions(settings, tiny_model_dir, tmp_path, gguf_tokenizer):
    from training.ml.tiny_model import build_tiny_model

    settings.PREFLOOP_BASE_MODEL_DIR = tiny_model_dir
    policy = services.ensure_default_run().base_version
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": "q"}])
    Completion.objects.create(prompt=prompt, policy_version=policy, text="a")
    settings.PREFLOOP_BASE_MODEL_DIR = build_tiny_model(tmp_path / "other", gguf_tokenizer)
    with pytest.raises(BaseModelError, match="has completions"):
        services.ensure_default_run()
    policy.refresh_from_db()
    assert policy.base_model_dir == str(tiny_model_dir)
