"""The two places PrefLoop's PPO does less work than plain TRL (issue 13, item 2), run
through TRL's own PPO helpers on the tiny model: they must change the cost, never the
numbers TRL reads.

- The value model is a head on the reward model's frozen features, computed once per
  rollout sequence however many PPO epochs value it again.
- The policy computes vocabulary logits only for the answer's positions.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper, forward
from trl.experimental.utils import get_reward

from training.ml.loading import PolicyStart
from training.ml.methods import TrainingInputs, ppo
from training.ml.methods.ppo import FeatureHeadCritic, PPOConfig, critic, response_logits_only
from training.ml.reward_scoring import RewardModelRef

pytestmark = pytest.mark.slow

PAD = 0
CONTEXT, ANSWER, ROWS = 12, 6, 4


@pytest.fixture
def query_responses():
    """Left-padded prompts, then answers, the second ending early (right padding)."""
    torch.manual_seed(0)
    rows = torch.randint(5, 500, (ROWS, CONTEXT + ANSWER))
    rows[1, :3] = PAD
    rows[2, CONTEXT + 3:] = PAD
    return rows


@pytest.fixture
def reward_model(tiny_model_dir):
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    return model.eval()


def test_the_head_critic_values_like_the_reward_model_and_runs_each_sequence_once(reward_model, query_responses):
    value_model = critic(reward_model, PPOConfig(batch_size=ROWS))
    assert isinstance(value_model, FeatureHeadCritic)
    backbone_weights = {name: p.clone() for name, p in reward_model.named_parameters()}
    # Only the head trains; the reward model's backbone is shared, not copied.
    assert [name for name, p in value_model.named_parameters() if p.requires_grad] == ["score.weight"]
    assert value_model.features.backbone is reward_model.model

    # The rollout: TRL values the batch through the value model's backbone and head.
    with torch.no_grad():
        rollout_values, _, _ = get_reward(value_model, query_responses, PAD, CONTEXT)
        expected, _, _ = get_reward(reward_model, query_responses, PAD, CONTEXT)
    assert torch.allclose(rollout_values, expected, atol=1e-6)  # starts as the reward model
    assert value_model.features.computed_rows == ROWS

    # Four PPO epochs value shuffled rows again, with gradients into the head only.
    optimizer = torch.optim.SGD(value_model.parameters(), lr=0.1)
    wrapper = PolicyAndValueWrapper(AutoModelForCausalLM.from_config(reward_model.config), value_model)
    for _epoch in range(4):
        order = torch.randperm(ROWS)
        _, values = forward(wrapper, query_responses[order], PAD)
        with torch.no_grad():
            features = forward(reward_model.model, query_responses[order], PAD).hidden_states[-1]
            assert torch.allclose(values, value_model.score(features), atol=1e-5)
        values[:, CONTEXT - 1:].pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert value_model.features.computed_rows == ROWS  # served from memory in every epoch
    assert not torch.equal(value_model.score.weight, reward_model.score.weight)  # the head learned
    assert all(torch.equal(p, backbone_weights[name]) for name, p in reward_model.named_parameters())

    # A new rollout is computed, and memory holds one batch, not every batch seen.
    with torch.no_grad():
        get_reward(value_model, query_responses.flip(1), PAD, CONTEXT)
    assert value_model.features.computed_rows == 2 * ROWS
    assert len(value_model.features.rows) == ROWS


@pytest.mark.parametrize("value_model", ["lora", "full"])
def test_the_copied_value_models_still_train_their_backbone(reward_model, value_model):
    value = critic(reward_model, PPOConfig(value_model=value_model))
    trained = {name for name, p in value.named_parameters() if p.requires_grad}
    assert "score.weight" in trained and any(name.startswith("model.layers.") for name in trained)
    assert value.model is not reward_model.model


class LMHeadPositions:
    """Records how many positions each call of a model's vocabulary head computed."""

    def __init__(self, vocabulary: int) -> None:
        self.vocabulary, self.positions = vocabulary, []

    def __call__(self, module, args, output) -> None:
        if isinstance(module, torch.nn.Linear) and module.out_features == self.vocabulary:
            self.positions.append(args[0].shape[1])


def test_answer_only_logits_are_the_same_numbers_where_ppo_reads_them(tiny_model_dir, query_responses):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear"))
    full = forward(policy, query_responses, PAD).logits
    heads = LMHeadPositions(base.config.vocab_size)
    with response_logits_only([policy, None], ANSWER + 1), \
            torch.nn.modules.module.register_module_forward_hook(heads):
        trimmed = forward(policy, query_responses, PAD).logits
        policy.generate(query_responses[:1, :CONTEXT], max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    # Through the PEFT wrapper the head ran on the answer's positions only; generation
    # keeps asking for its own one position per step.
    assert heads.positions == [ANSWER + 1, 1, 1, 1]
    assert trimmed.shape == full.shape
    read = slice(CONTEXT - 1, -1)  # what TRL's PPO reads: the positions that predict the answer
    assert torch.allclose(trimmed[:, read], full[:, read], atol=1e-5)
    assert torch.count_nonzero(trimmed[:, :CONTEXT - 1]) == 0  # never computed
    assert torch.equal(forward(policy, query_responses, PAD).logits, full)  # the hooks are gone

    # Gradients of what PPO reads are the same as with the full logits.
    def gradients(trim: bool):
        policy.zero_grad()
        with response_logits_only([policy], ANSWER + 1) if trim else torch.enable_grad():
            logits = forward(policy, query_responses, PAD).logits[:, read]
        torch.log_softmax(logits, -1)[..., 7].sum().backward()
        return {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}

    with_full, with_trim = gradients(False), gradients(True)
    assert with_full.keys() == with_trim.keys() and with_full
    assert all(torch.allclose(with_full[name], with_trim[name], atol=1e-5) for name in with_full)


def test_inside_trls_ppo_both_shortcuts_are_live(tiny_model_dir, reward_model, tmp_path, monkeypatch):
    """A real PPO update on the tiny model: the value model ran each rollout sequence
    through the reward backbone once, and the policy's vocabulary head never ran on a
    prompt's positions."""
    reward_model.save_pretrained(tmp_path / "reward-model")
    critics = []
    monkeypatch.setattr(ppo, "critic", lambda *args: critics.append(critic(*args)) or critics[-1])
    config = PPOConfig(batch_size=4, total_episodes=8, response_length=ANSWER, ppo_epochs=2)
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir),
                            prompts=[[{"role": "user", "content": f"Question number {i}?"}] for i in range(4)],
                            reward_model=RewardModelRef(tiny_model_dir, tmp_path / "reward-model", 0.0, 1.0))
    heads = LMHeadPositions(reward_model.config.vocab_size)
    with torch.nn.modules.module.register_module_forward_hook(heads):
        result = ppo.train(inputs, tmp_path / "policy", config)

    assert result.examples == 8 and (tmp_path / "policy" / "adapter_config.json").is_file()
    assert critics[0].features.computed_rows == 8  # two rollouts of 4; four epochs read memory
    assert set(heads.positions) == {1, ANSWER + 1}  # generation steps, and the answer's positions


class AttendedTokens(torch.nn.Module):
    """Calls the backbone it wraps, recording how many tokens of each row attended."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.attended = backbone, []

    def forward(self, input_ids, attention_mask, **kwargs):
        self.attended += attention_mask.long().sum(-1).tolist()
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_inside_trls_ppo_a_left_truncating_reward_model_reads_only_its_window(tiny_model_dir, reward_model,
                                                                              tmp_path, monkeypatch):
    """A version trained with left truncation reads the last max_length tokens of what
    TRL's PPO loop hands it (every other scorer cuts so too, tests/test_reward_model_ml.py),
    while the value model still reads whole rollouts."""
    import json

    from transformers import AutoTokenizer

    from training.ml.reward_loading import CONFIG_FILE
    from training.ml.tokens import prompt_input_ids

    limit = 10
    reward_model.save_pretrained(tmp_path / "reward-model")
    (tmp_path / "reward-model" / CONFIG_FILE).write_text(json.dumps({"max_length": limit, "truncation": "left"}))
    windows, critics = [], []

    def read_last_tokens(model, limit):
        ppo_read_last_tokens(model, limit)
        window = getattr(model, model.base_model_prefix)
        window.backbone = AttendedTokens(window.backbone)  # behind the window: what the backbone is given
        windows.append(window)

    ppo_read_last_tokens = ppo.read_last_tokens
    monkeypatch.setattr(ppo, "read_last_tokens", read_last_tokens)
    monkeypatch.setattr(ppo, "critic", lambda *args: critics.append(critic(*args)) or critics[-1])
    config = PPOConfig(batch_size=4, total_episodes=4, response_length=ANSWER)
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir),
                            prompts=[[{"role": "user", "content": f"Question number {i}?"}] for i in range(4)],
                            reward_model=RewardModelRef(tiny_model_dir, tmp_path / "reward-model", 0.0, 1.0))
    result = ppo.train(inputs, tmp_path / "policy", config)

    assert result.examples == 4 and (tmp_path / "policy" / "adapter_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert min(len(prompt_input_ids(tokenizer, prompt)) for prompt in inputs.prompts) > limit
    recorded = windows[0].backbone
    assert recorded.attended == [limit] * 4  # every rollout was longer: each read its last 10 tokens
    assert critics[0].features.backbone is recorded.backbone  # the critic holds the backbone, not the window
    assert critics[0].features.computed_rows == 4
