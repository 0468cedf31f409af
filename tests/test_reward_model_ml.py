"""The reward-model code on its own: no Django, tiny models, a learnable preference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.ml.configs import ConfigError, config_from_dict
from training.ml.preference_pairs import PreferencePair, is_heldout, split_heldout
from training.ml.reward_features import FeatureStore, last_scored_positions, write_features
from training.ml.reward_heads import ensemble_disagreement, fit_bootstrap_heads
from training.ml.reward_loading import ENSEMBLE_FILE
from training.ml.reward_scoring import RewardScorer
from training.ml.reward_training import RewardTrainingConfig, grouped_batches, train_reward_model

WORDS = "the a river stone cloud quick slow green bright table window music paper".split()


def marker_pairs(count: int, seed: int = 0, marker: str = "banana") -> list[PreferencePair]:
    """A preference a tiny model can learn: the completion containing the marker wins."""
    rng = random.Random(seed)

    def sentence() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]

    pairs = []
    for i in range(count):
        marked = sentence()
        marked.insert(rng.randint(0, len(marked)), marker)
        prompt = [{"role": "user", "content": f"Say something, set {seed} number {i}"}]
        pairs.append(PreferencePair(i, prompt, " ".join(marked), " ".join(sentence())))
    return pairs


def test_heldout_split_is_stable_per_comparison_and_near_the_fraction():
    groups = range(20_000)
    held = [g for g in groups if is_heldout(g, 0.1)]
    assert 0.09 < len(held) / 20_000 < 0.11
    assert held == [g for g in groups if is_heldout(g, 0.1)]
    pairs = [PreferencePair(g, [], "x", "y") for g in range(300) for _ in range(3)]  # 3 pairs per comparison
    train, heldout = split_heldout(pairs, 0.1)
    assert {p.group for p in train}.isdisjoint({p.group for p in heldout})


def test_grouped_batches_keep_each_comparison_in_one_batch():
    rng = random.Random(1)
    groups = [g for g in range(60) for _ in range(rng.choice([1, 1, 1, 3, 6]))] + [999] * 10  # one oversized group
    batches = grouped_batches(groups, batch_size=8, seed=4)
    assert sorted(i for batch in batches for i in batch) == list(range(len(groups)))
    for group in set(groups):
        holding = [b for b in batches if any(groups[i] == group for i in b)]
        assert len(holding) == 1, f"group {group} split over {len(holding)} batches"
    assert all(len(b) <= 8 for b in batches if groups[b[0]] != 999)
    assert grouped_batches(groups, 8, seed=4) != grouped_batches(groups, 8, seed=5)  # shuffled per epoch seed


def test_scored_position_is_the_last_token_that_is_not_padding():
    pad = 0
    ids = torch.tensor([[5, 6, 7, pad, pad], [5, 6, 7, 8, 9]])
    assert last_scored_positions(ids, pad).tolist() == [2, 4]


def test_bootstrap_heads_agree_where_the_data_is_clear_and_spread_where_it_is_not():
    generator = torch.Generator().manual_seed(0)
    n, hidden = 200, 8
    differences = torch.randn(n, hidden, generator=generator) * 0.6
    differences[:, 0] = 2.0 + 0.3 * torch.randn(n, generator=generator)  # dimension 0 decides the preference
    rejected = torch.randn(n, hidden, generator=generator)
    heads = fit_bootstrap_heads(rejected + differences, rejected, init=torch.zeros(hidden), members=6, seed=0)
    assert heads.shape == (6, hidden)
    assert (heads[:, 0] > 0).all()  # every member learned the preference
    clear = ensemble_disagreement(heads, [torch.eye(hidden)[0] * 0.5, torch.zeros(hidden)])
    unclear = ensemble_disagreement(heads, [torch.eye(hidden)[3] * 3.0, torch.zeros(hidden)])
    assert unclear > clear


@pytest.mark.slow
def test_a_marker_preference_is_learned_to_90_percent_heldout_accuracy(tiny_model_dir, tmp_path: Path):
    pairs = marker_pairs(240)
    config = RewardTrainingConfig(learning_rate=3e-3, epochs=3, heldout_fraction=0.15, ensemble_size=3)
    normalization = [(p.prompt, p.rejected) for p in pairs[:40]] + [(p.prompt, p.chosen) for p in pairs[:40]]
    steps = []
    result = train_reward_model(pairs, tiny_model_dir, tmp_path / "v1", config,
                                on_step=lambda step, total, metrics: steps.append((step, total)),
                                normalization_samples=normalization)
    assert result.heldout_pairs > 20 and result.train_pairs + result.heldout_pairs == 240
    assert result.heldout_accuracy >= 0.9
    assert steps[0] == (0, steps[-1][1])  # the total is reported before the first step
    assert steps[-1][0] == steps[-1][1] > 0  # and progress reached it
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history if "train/loss" in h)

    scorer = RewardScorer.load(tiny_model_dir, tmp_path / "v1", result.reward_mean, result.reward_std)
    normalized = scorer.score(normalization)
    assert abs(normalized.mean().item()) < 1e-3 and abs(normalized.std(unbiased=False).item() - 1) < 1e-3
    fresh = marker_pairs(40, seed=99)
    assert (scorer.score([(p.prompt, p.chosen) for p in fresh]) > scorer.score(
        [(p.prompt, p.rejected) for p in fresh])).float().mean() >= 0.9
    assert (tmp_path / "v1" / ENSEMBLE_FILE).is_file()
    assert len(scorer.disagreement([[(p.prompt, p.chosen), (p.prompt, p.rejected)] for p in fresh[:3]])) == 3

    # Warm start: the next version continues from v1's adapter, so even a sliver of an
    # epoch keeps what v1 knew.
    sliver = RewardTrainingConfig(learning_rate=1e-5, epochs=0.05, heldout_fraction=0.15, ensemble_size=0)
    warm = train_reward_model(pairs, tiny_model_dir, tmp_path / "v2", sliver, warm_start_dir=tmp_path / "v1")
    cold = train_reward_model(pairs, tiny_model_dir, tmp_path / "v2-cold", sliver)
    assert warm.heldout_accuracy >= 0.9 > cold.heldout_accuracy


def test_a_refit_head_learns_preferences_its_starting_head_gets_wrong():
    """fit_head (the fast path's Bradley–Terry fit on feature differences) starting
    from a head that ranks every pair backwards ends up ranking unseen pairs right."""
    from training.ml.reward_heads import fit_head

    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(64, generator=generator)

    def oriented(count: int) -> torch.Tensor:  # chosen − rejected, the truth's way round
        differences = torch.randn(count, 64, generator=generator)
        return differences * torch.sign(differences @ truth).unsqueeze(1)

    head = fit_head(oriented(400), init=-truth)
    unseen = oriented(400)
    assert (unseen @ -truth > 0).float().mean() == 0
    assert (unseen @ head > 0).float().mean() > 0.9


def test_the_feature_store_embeds_each_answer_once_by_its_content(tmp_path):
    from training.ml.reward_features import sample_key

    prompt = [{"role": "user", "content": "hi"}]
    seen = [(prompt, "one"), (prompt, "two", True, None)]
    write_features(tmp_path / "a.pt", seen, torch.eye(2), head=torch.ones(2))
    store = FeatureStore.read([tmp_path / "a.pt"])
    assert sample_key((prompt, "one")) == sample_key((prompt, "one", True, None))
    assert sample_key((prompt, "one", False)) != sample_key((prompt, "one"))  # cut at the limit: another input
    new = [(prompt, "three"), (prompt, "one", True, None), (prompt, "three")]
    assert store.missing(new) == [(prompt, "three")]
    store.add([sample_key((prompt, "three"))], torch.tensor([[5.0, 6.0]]))
    assert store.features([(prompt, "two"), (prompt, "three")]).tolist() == [[0.0, 1.0], [5.0, 6.0]]
    assert store.head.tolist() == [1.0, 1.0]


def test_answers_longer_than_max_length_are_remembered_not_embedded(tiny_model_dir, tmp_path):
    """One very long answer would need tens of GB of attention to score; like TRL's
    training, the feature store leaves it out, and remembers that across files."""
    from training.ml.reward_loading import load_reward_backbone, load_reward_tokenizer

    tokenizer = load_reward_tokenizer(tiny_model_dir)
    model = load_reward_backbone(tiny_model_dir, tokenizer, torch.device("cpu")).eval()
    prompt = [{"role": "user", "content": "Say something"}]
    short, long = (prompt, "a short answer"), (prompt, "word " * 400)
    store = FeatureStore(head=model.score.weight[0].detach())
    embedded, features, too_long = store.embed(model, tokenizer, [short, long, short], max_length=64)
    assert embedded == [short] and too_long == [long] and features.shape == (1, model.config.hidden_size)
    assert store.scorable([PreferencePair(0, prompt, short[1], long[1])]) == []
    write_features(tmp_path / "f.pt", embedded, features, too_long, store.head)
    assert FeatureStore.read([tmp_path / "f.pt"]).missing([short, long]) == []


def test_lora_targets_choose_the_layers_the_adapter_trains(tiny_model_dir, tmp_path):
    """`lora_targets` (a run setting) reaches PEFT: attention-only trains adapters on the
    named projections and nowhere else; an empty list is refused before any training."""


    config = RewardTrainingConfig(lora_targets="q_proj, v_proj", epochs=0.1, ensemble_size=0, heldout_fraction=0.2)
    train_reward_model(marker_pairs(16), tiny_model_dir, tmp_path / "attention", config)
    adapter = json.loads((tmp_path / "attention" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    trained = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in load_file(
        tmp_path / "attention" / "adapter_model.safetensors") if ".lora_" in name}
    assert trained == {"q_proj", "v_proj"}
    assert RewardTrainingConfig().lora_target_modules == "all-linear"
    with pytest.raises(ConfigError, match="lora_targets"):
        config_from_dict(RewardTrainingConfig, {"lora_targets": " , "})


def test_a_full_retrain_publishes_the_head_fitted_on_its_features(tiny_model_dir, tmp_path):
    """After a short epoch, the head TRL trained is far from converged on the features
    it has; the version publishes the Bradley–Terry head fitted on them (the one every
    loader scores with), keeps the trained head in its features file as the anchor of
    its refits, and reports the trained head's held-out accuracy next to its own."""
    from training.ml.preference_pairs import chosen_texts, rejected_texts
    from training.ml.reward_features import FEATURES_FILE
    from training.ml.reward_loading import HEAD_FILE, load_reward_model

    pairs = marker_pairs(160)
    short = RewardTrainingConfig(learning_rate=1e-3, epochs=0.5, heldout_fraction=0.25, ensemble_size=0)
    fitted = train_reward_model(pairs, tiny_model_dir, tmp_path / "fitted", short)
    trained = train_reward_model(pairs, tiny_model_dir, tmp_path / "trained",
                                 RewardTrainingConfig(**{**short.to_dict(), "fit_head_after_training": False}))

    assert not (tmp_path / "trained" / HEAD_FILE).exists() and trained.heldout_accuracy_trained_head is None
    head = torch.load(tmp_path / "fitted" / HEAD_FILE)
    store = FeatureStore.read([tmp_path / "fitted" / FEATURES_FILE])
    same_training = FeatureStore.read([tmp_path / "trained" / FEATURES_FILE])
    assert torch.allclose(store.head, same_training.head, atol=1e-5)  # the trained head is kept as the anchor
    assert fitted.heldout_accuracy_trained_head == pytest.approx(trained.heldout_accuracy)
    assert fitted.heldout_accuracy > trained.heldout_accuracy  # 0.825 against 0.70 here

    model, _ = load_reward_model(tiny_model_dir, tmp_path / "fitted")
    assert torch.allclose(model.score.weight[0], head)  # what every consumer scores with
    train, _ = split_heldout(pairs, short.heldout_fraction)
    differences = store.features(chosen_texts(train)) - store.features(rejected_texts(train))

    def bradley_terry_loss(w: torch.Tensor) -> float:
        return torch.nn.functional.softplus(-(differences @ w)).mean().item()

    assert bradley_terry_loss(head) < bradley_terry_loss(store.head)


def test_left_truncation_keeps_long_dialogs_and_scores_them_as_it_trained(tiny_model_dir, tmp_path):
    """Half the dialogs run past max_length. "drop" (TRL's way) trains on the other half
    and counts the rest; "left" keeps every pair by cutting the oldest turns, never the
    answer, and every scorer of that version cuts inputs the same way."""
    from dataclasses import replace

    from training.ml.reward_features import score_token_ids
    from training.ml.reward_loading import input_limit
    from training.ml.reward_scoring import score_features
    from training.ml.tokens import reward_inputs

    history = [{"role": "user", "content": "tell me about rivers and stones " * 12},
               {"role": "assistant", "content": "clouds drift over the green table " * 12}]
    pairs = [replace(p, prompt=history + p.prompt) if p.group % 2 else p for p in marker_pairs(200)]
    common = dict(learning_rate=3e-3, epochs=2, heldout_fraction=0.2, ensemble_size=0, max_length=64)
    dropped = train_reward_model(pairs, tiny_model_dir, tmp_path / "drop", RewardTrainingConfig(**common))
    kept = train_reward_model(pairs, tiny_model_dir, tmp_path / "left",
                              RewardTrainingConfig(**common, truncation="left"))

    long_train = sum(1 for p in split_heldout(pairs, 0.2)[0] if p.group % 2)
    assert dropped.dropped_too_long == long_train > 0 and kept.dropped_too_long == 0
    assert input_limit(tmp_path / "drop") is None and input_limit(tmp_path / "left") == 64
    assert kept.heldout_accuracy >= 0.85  # long dialogs included: their answers were kept

    scorer = RewardScorer.load(tiny_model_dir, tmp_path / "left", 0.0, 1.0)
    long_samples = [(p.prompt, p.chosen) for p in pairs[1:9:2]]
    ids = reward_inputs(scorer.tokenizer, long_samples)
    assert min(len(x) for x in ids) > 64
    as_trained, _ = score_token_ids(scorer.model, scorer.tokenizer.pad_token_id, [x[-64:] for x in ids])
    assert torch.allclose(scorer.score(long_samples), as_trained, atol=1e-5)
    whole, _ = score_features(scorer.model, scorer.tokenizer, long_samples)
    assert not torch.allclose(whole, as_trained, atol=1e-3)
    # GRPO/RLOO/online DPO's reward function cuts the same way.
    from training.ml.reward_function import RewardModelFunction
    from training.ml.reward_scoring import RewardModelRef
    from training.ml.tokens import answer_input_ids, prompt_input_ids

    function = RewardModelFunction(RewardModelRef(tiny_model_dir, tmp_path / "left"), scorer.tokenizer)
    answers = [answer_input_ids(scorer.tokenizer, text) for _, text in long_samples]
    rewards = function([prompt for prompt, _ in long_samples], None, answers)
    assert [len(prompt_input_ids(scorer.tokenizer, prompt)) > 64 for prompt, _ in long_samples] == [True] * 4
    assert torch.allclose(torch.tensor(rewards), as_trained, atol=1e-5)
    with pytest.raises(ConfigError, match="truncation"):
        config_from_dict(RewardTrainingConfig, {"truncation": "right"})

    # So does PPO's: TRL's loop hands the reward model whole rows (left-padded prompt,
    # answer, right padding) and reads the score at the last real token.
    from trl.experimental.utils import get_reward

    from training.ml.methods.ppo import PPOConfig, critic, read_last_tokens
    from training.ml.reward_scoring import normalized_reward_model

    pad = scorer.tokenizer.pad_token_id
    queries = [prompt_input_ids(scorer.tokenizer, prompt) for prompt, _ in long_samples]
    query_width, answer_width = max(map(len, queries)), max(map(len, answers)) + 3
    rows = torch.tensor([[pad] * (query_width - len(q)) + q + a + [pad] * (answer_width - len(a))
                         for q, a in zip(queries, answers, strict=True)])
    ppo_reward_model = normalized_reward_model(RewardModelRef(tiny_model_dir, tmp_path / "left"))
    value_model = critic(ppo_reward_model, PPOConfig())  # made first, as PPO makes it
    with torch.no_grad():
        _, whole_in_ppo, _ = get_reward(ppo_reward_model, rows, pad, query_width)
        values_before, _, _ = get_reward(value_model, rows, pad, query_width)
        read_last_tokens(ppo_reward_model, input_limit(tmp_path / "left"))
        _, cut_in_ppo, _ = get_reward(ppo_reward_model, rows, pad, query_width)
        value_model.features.rows.clear()  # its rollout cache: the rows run through the backbone again
        values_after, _, _ = get_reward(value_model, rows, pad, query_width)
    assert torch.allclose(whole_in_ppo, whole, atol=1e-4)  # the rows are what the other scorers read
    assert torch.allclose(cut_in_ppo, as_trained, atol=1e-4)
    assert torch.equal(values_before, values_after)  # the value model still reads whole rollouts
    # A pad the policy sampled mid-answer: TRL reads the score before it, and the window ends there.
    query, answer = queries[0], answers[0]
    row = torch.tensor([query + answer[:3] + [pad] + answer[3:] + [pad] * 2])
    with torch.no_grad():
        _, cut_at_pad, _ = get_reward(ppo_reward_model, row, pad, len(query))
    expected, _ = score_token_ids(scorer.model, pad, [(query + answer[:3])[-64:]])
    assert torch.allclose(cut_at_pad, expected, atol=1e-4)

    # A head refit of that version embeds new long dialogs the same way.
    from training.ml.reward_features import FEATURES_FILE
    from training.ml.reward_refit import refit_reward_head

    new = [replace(p, group=1000 + p.group, prompt=history + p.prompt) for p in marker_pairs(10, seed=3)]
    refit = refit_reward_head(pairs + new, tiny_model_dir, tmp_path / "left", [tmp_path / "left" / FEATURES_FILE],
                              tmp_path / "refit", RewardTrainingConfig(**common, truncation="left"))
    assert refit.embedded == 2 * 10 and refit.dropped_too_long == 0

