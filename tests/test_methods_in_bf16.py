"""Every policy-update method runs an update with the run's precision set to bf16, on
the tiny model on the CPU: the base and the reward model in bf16, the adapter in fp32,
finite metrics."""

from __future__ import annotations

import math

import pytest
import torch

from training.ml.loading import PolicyStart
from training.ml.methods import METHODS, TrainingInputs
from training.ml.preference_pairs import PreferencePair
from training.ml.reward_scoring import RewardModelRef

pytestmark = pytest.mark.slow

TOKENS = 8
ONE_UPDATE = {
    "ppo": {"batch_size": 4, "response_length": TOKENS, "total_episodes": 4, "ppo_epochs": 1},
    "rloo": {"batch_size": 4, "num_generations": 2, "max_completion_length": TOKENS},
    "grpo": {"batch_size": 4, "num_generations": 2, "max_completion_length": TOKENS},
    "online_dpo": {"prompts_per_step": 4, "max_new_tokens": TOKENS, "max_length": 64},
    "dpo": {"batch_size": 4, "max_length": 64},
    "sft_chosen": {"batch_size": 4, "max_length": 64},
    "best_of_n": {"n": 2, "max_new_tokens": TOKENS, "batch_size": 4, "max_length": 64},
}
PROMPTS = [[{"role": "user", "content": f"Say something about {topic}."}]
           for topic in ("tea", "rain", "maps", "chairs")]
PAIRS = [PreferencePair(group=i, prompt=PROMPTS[i], chosen=f"{i} is a fine answer", rejected="no") for i in range(4)]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from training.ml.reward_loading import load_reward_tokenizer

    tokenizer = load_reward_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def trainers(monkeypatch):
    """The TRL trainers the methods build, as each starts training."""
    from training.ml.methods import base, dpo, ppo, sampling_trainers, supervised

    seen = []
    train_and_save = base.train_and_save

    def recorded(trainer, *args, **kwargs):
        seen.append(trainer)
        return train_and_save(trainer, *args, **kwargs)

    for module in (dpo, ppo, sampling_trainers, supervised):
        monkeypatch.setattr(module, "train_and_save", recorded)
    return seen


def policy_models(trainer) -> list[torch.nn.Module]:
    """The causal LMs a trainer holds: the policy and any separate reference."""
    policy = getattr(trainer, "policy_model", None) or trainer.model
    reference = getattr(trainer, "ref_model", None)
    return [model for model in (policy, reference) if model is not None]


@pytest.mark.parametrize("name", list(ONE_UPDATE))
def test_each_method_updates_in_bf16_with_the_adapter_in_fp32(name, tiny_model_dir, reward_dir, tmp_path, trainers):
    method = METHODS[name]
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir), prompts=PROMPTS, pairs=PAIRS,
                            reward_model=RewardModelRef(tiny_model_dir, reward_dir), precision="bf16")
    result = method.train(inputs, tmp_path / "out", method.config(ONE_UPDATE[name]))

    assert (tmp_path / "out" / "adapter_config.json").is_file()
    curves = [curve.key for curve in method.curves]
    values = [entry[key] for entry in result.history for key in curves if key in entry]
    assert values and all(math.isfinite(value) for value in values), result.history
    assert len(trainers) == 1
    policy = policy_models(trainers[0])[0]
    trained = [p for p in policy.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert {p.dtype for n, p in policy.named_parameters() if "lora_" not in n and not p.requires_grad} == {
        torch.bfloat16}
    assert trainers[0].args.bf16 and not trainers[0].args.fp16
    if name == "ppo":  # its own Accelerator, told explicitly
        assert trainers[0].accelerator.mixed_precision == "bf16"
        assert next(trainers[0].reward_model.parameters()).dtype == torch.bfloat16
