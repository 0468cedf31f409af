"""The method registry and the small pieces of glue we write around TRL: config
validation, the command line, best-of-N selection, SFT targets, the reward function
GRPO/RLOO/online DPO call, and publishing. (Each method's training is exercised end to
end in test_policy_methods.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.ml.configs import ConfigError, config_from_dict, field_specs
from training.ml.generation import Sample
from training.ml.methods import METHODS, PAIRS, PROMPTS, REWARD_MODEL, method_named
from training.ml.methods.best_of_n import best_answers
from training.ml.methods.cli import parser_for
from training.ml.methods.sft_chosen import chosen_answers
from training.ml.preference_pairs import PreferencePair
from training.ml.reward_function import answer_ids

ROOT = Path(__file__).resolve().parent.parent


def test_the_registry_holds_every_method_the_issue_names_with_what_it_needs():
    assert set(METHODS) >= {"ppo", "rloo", "grpo", "online_dpo", "dpo", "best_of_n", "sft_chosen"}
    assert METHODS["dpo"].needs == {PAIRS} and METHODS["sft_chosen"].needs == {PAIRS}
    for name in ("ppo", "rloo", "grpo", "online_dpo", "best_of_n"):
        assert METHODS[name].needs == {REWARD_MODEL, PROMPTS}, name
    with pytest.raises(ValueError, match="unknown method 'reinforce'"):
        method_named("reinforce")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_config_field_is_documented_and_the_defaults_validate(name):
    method = METHODS[name]
    specs = field_specs(method.config_class)
    assert specs and all(spec.doc and "\n" not in spec.doc for spec in specs), [s.name for s in specs if not s.doc]
    assert method.config({}) == method.config_class()
    help_text = parser_for(method).format_help()
    for spec in specs:
        assert f"--{spec.name.replace('_', '-')}" in help_text


@pytest.mark.parametrize(("name", "values", "message"), [
    ("ppo", {"kl_coef": -1}, "kl_coef"),
    ("ppo", {"batch_size": 6, "num_mini_batches": 4}, "multiple of num_mini_batches"),
    ("ppo", {"reference": "yesterday"}, "not one of initial, previous"),
    ("grpo", {"num_generations": 1}, "num_generations"),
    ("dpo", {"beta": 0}, "beta"),
    ("best_of_n", {"n": 1}, "n must"),
    ("sft_chosen", {"learning_rate": "fast"}, "learning_rate"),
    ("rloo", {"lerning_rate": 1e-4}, "unknown setting"),
    ("online_dpo", {"epochs": True}, "epochs"),
])
def test_a_bad_setting_is_refused_with_its_name(name, values, message):
    with pytest.raises(ConfigError, match=message):
        method_named(name).config(values)


def test_settings_from_a_form_or_command_line_are_parsed_by_type():
    config = method_named("ppo").config({"batch_size": "16", "total_episodes": "", "learning_rate": "1e-4",
                                         "reference": "previous"})
    assert (config.batch_size, config.total_episodes, config.learning_rate, config.reference) == (16, None, 1e-4,
                                                                                                   "previous")
    with pytest.raises(ConfigError, match="batch_size: a value is required"):
        method_named("ppo").config({"batch_size": ""})
    with pytest.raises(ConfigError, match="whole number"):
        method_named("ppo").config({"batch_size": 2.5})
    lenient = config_from_dict(METHODS["dpo"].config_class, {"beta": 0.2, "from_another_method": 1}, strict=False)
    assert lenient.beta == 0.2


@pytest.mark.parametrize("name", ["ppo", "dpo"])
def test_a_method_module_runs_from_the_command_line(name):
    shown = subprocess.run([sys.executable, "-m", f"training.ml.methods.{name}", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "--base-model" in shown.stdout and "--out" in shown.stdout
    assert ("--reward-model" in shown.stdout) == (name == "ppo") and ("--pairs" in shown.stdout) == (name == "dpo")
    missing = subprocess.run([sys.executable, "-m", f"training.ml.methods.{name}", "--out", "/tmp/x"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--base-model" in missing.stderr


def sample(text: str) -> Sample:
    return Sample(text=text, ended=True, num_tokens=len(text.split()))


def test_best_of_n_keeps_each_prompts_best_answer_and_drops_those_below_the_floor():
    samples = [[sample("a0"), sample("a1"), sample("a2")], [sample("b0"), sample("b1"), sample("b2")],
               [sample("c0"), sample("c1"), sample("c2")]]
    scores = [[0.1, 0.9, 0.3], [-2.0, -1.5, -3.0], [0.5, 0.5, 0.2]]
    chosen = best_answers(samples, scores)
    assert [(c.prompt_index, c.sample.text, c.score) for c in chosen] == [(0, "a1", 0.9), (1, "b1", -1.5),
                                                                        (2, "c0", 0.5)]  # first of equals
    assert [c.sample.text for c in best_answers(samples, scores, min_score=0.0)] == ["a1", "c0"]
    with pytest.raises(ValueError, match="prompt 1: 3 samples but 2 scores"):
        best_answers(samples, [[1, 2, 3], [1, 2], [1, 2, 3]])


def test_sft_targets_are_answers_chosen_and_never_rejected_once_each():
    prompt = [{"role": "user", "content": "q"}]
    pairs = [
        PreferencePair(1, prompt, "best", "worst", chosen_ids=(5, 6)),  # a 3-way ranking: best > mid > worst
        PreferencePair(1, prompt, "best", "mid", chosen_ids=(5, 6)),
        PreferencePair(1, prompt, "mid", "worst"),
        PreferencePair(2, prompt, "left", "right"),  # two people disagree: no target
        PreferencePair(2, prompt, "right", "left"),
        PreferencePair(3, prompt, "best", "other", chosen_ended=False),  # same answer again, another comparison
    ]
    assert chosen_answers(pairs) == [(prompt, "best", True, (5, 6))]


def test_the_reward_function_reads_answers_up_to_the_first_eos():
    assert answer_ids([4, 5, 2, 0, 0], eos_token_id=2) == ([4, 5, 2], True)
    assert answer_ids([4, 5, 6], eos_token_id=2) == ([4, 5, 6], False)
    assert answer_ids([2, 7], eos_token_id=2) == ([2], True)


def test_trl_methods_get_the_same_reward_the_app_scores_with(tiny_model_dir, tiny_reward_model):
    """GRPO, RLOO and online DPO call RewardModelFunction on token ids; the pages and
    best-of-N score stored answers with RewardScorer. Same answer, same number: else the
    policy would climb a different reward than the one reported."""
    from training.ml.loading import load_tokenizer
    from training.ml.reward_function import RewardModelFunction
    from training.ml.reward_scoring import RewardModelRef, RewardScorer

    tokenizer = load_tokenizer(tiny_model_dir)
    ref = RewardModelRef(tiny_model_dir, tiny_reward_model, mean=0.3, std=2.0)
    reward = RewardModelFunction(ref, tokenizer, missing_eos_penalty=1.0)
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
    answers = [tokenizer("Blue, mostly.", add_special_tokens=False)["input_ids"],
               tokenizer("one two three four five", add_special_tokens=False)["input_ids"]]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    # The first answer ended (EOS, then padding a trainer adds); the second was cut off.
    completion_ids = [answers[0] + [eos, pad, pad], answers[1]]
    got = reward(prompts=prompts, completions=["", ""], completion_ids=completion_ids)

    scorer = RewardScorer.load(tiny_model_dir, tiny_reward_model, ref.mean, ref.std)
    expected = scorer.score([(prompts[0], "", True, tuple(answers[0])), (prompts[1], "", False, tuple(answers[1]))])
    assert got == pytest.approx([expected[0].item(), expected[1].item() - 1.0], abs=1e-4)
    assert got[0] != pytest.approx(got[1], abs=1e-3)  # the two answers are told apart


@pytest.mark.django_db
def test_a_failed_training_publishes_nothing_and_leaves_no_folder(settings, tmp_path, base_run):
    from training.models import Job, PolicyVersion
    from training.services.artifacts import publish_artifact

    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    job = Job.objects.create(kind=Job.Kind.POLICY_UPDATE, run=base_run)
    before = PolicyVersion.objects.count()

    def half_written(folder: Path):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError("NaN in the loss")

    with pytest.raises(RuntimeError, match="NaN"):
        publish_artifact("policy", job, PolicyVersion, half_written, manifest=lambda _: {},
                         create_row=lambda number, folder, _: None)

    def written(folder: Path):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"whole")

    def row_refused(number, folder, _):
        raise ValueError("the database said no")

    with pytest.raises(ValueError, match="said no"):
        publish_artifact("policy", job, PolicyVersion, written, manifest=lambda _: {}, create_row=row_refused)
    assert PolicyVersion.objects.count() == before
    assert not any((tmp_path / "artifacts").rglob("*.safetensors"))


def test_kl_to_the_reference_is_zero_for_the_same_policy_and_grows_as_it_moves(tiny_model_dir):
    """The benchmark's KL (training/ml/divergence.py): a policy against itself is exactly
    0; a copy whose output layer is nudged is further away the harder it is nudged."""
    import copy

    from training.ml.divergence import answer_log_prob, sampled_kl
    from training.ml.loading import load_policy

    policy, tokenizer = load_policy(tiny_model_dir)
    prompts = [[{"role": "user", "content": f"Say something, {i}."}] for i in range(4)]
    same = sampled_kl(policy, policy, tokenizer, prompts, samples_per_prompt=2, max_new_tokens=8)
    assert (same.mean, same.stderr, same.answers) == (0.0, 0.0, 8)

    def nudged(scale: float):
        moved = copy.deepcopy(policy)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            weight = moved.get_output_embeddings().weight
            weight.add_(scale * torch.randn(weight.shape, generator=generator))
        return moved

    small = sampled_kl(nudged(0.05), policy, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=8)
    large = sampled_kl(nudged(0.5), policy, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=8)
    assert 0 < small.mean < large.mean
    # The log-probability of a fixed answer is a sum over its tokens, EOS included.
    ids = tokenizer("hello there", add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert answer_log_prob(policy, prompt_ids, ids) < answer_log_prob(policy, prompt_ids, ids[:1]) < 0
