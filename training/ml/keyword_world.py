"""A world in which a policy update has something to learn within seconds: the steerable
tiny policy (tiny_model.py with output_scale=22), an oracle that prefers answers
containing a keyword the policy says about half the time (the most informative case), the
oracle's judgements of the policy's own samples, and a reward model trained on them.
The policy-method tests and the PPO value-model benchmark use it; it writes gibberish,
but whether a method moves it the oracle's way is measurable on a CPU in a minute.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from training.ml.generation import Sample, SamplingConfig, iter_sample_batches
from training.ml.loading import load_policy
from training.ml.preference_pairs import PreferencePair
from training.ml.reward_training import RewardTrainingConfig, RewardTrainingResult, train_reward_model
from training.ml.tiny_model import build_tiny_model

PROMPTS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(64)]
SAMPLES_PER_PROMPT = 4
TOKENS = 16


@dataclass
class KeywordWorld:
    policy_dir: Path
    word: str
    judged: list[tuple[int, Sample, Sample]]
    """(prompt index, chosen sample, rejected sample): pairs where one answer has the word."""
    rm_dir: Path
    rm: RewardTrainingResult


def build_keyword_world(root: Path, tokenizer) -> KeywordWorld:
    policy_dir = build_tiny_model(root / "policy", tokenizer, output_scale=22)
    model, tokenizer = load_policy(policy_dir)
    config = SamplingConfig(max_new_tokens=TOKENS, temperature=0.7, batch_size=64, seed=1)
    groups = [group for batch in iter_sample_batches(model, tokenizer, PROMPTS, SAMPLES_PER_PROMPT, config)
              for group in batch]
    counts = Counter(word for group in groups for s in group for word in set(s.text.split()))
    total = len(PROMPTS) * SAMPLES_PER_PROMPT
    word = min(counts, key=lambda w: abs(counts[w] / total - 0.5))
    judged = []
    for index, group in enumerate(groups):
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                has_a, has_b = word in group[a].text.split(), word in group[b].text.split()
                if has_a != has_b:
                    judged.append((index, *((group[a], group[b]) if has_a else (group[b], group[a]))))
    pairs = [PreferencePair(i, PROMPTS[p], c.text, r.text, None, c.ended, r.ended, c.token_ids, r.token_ids)
             for i, (p, c, r) in enumerate(judged)]
    result = train_reward_model(
        pairs, policy_dir, root / "reward-model", RewardTrainingConfig(use_lora=False, learning_rate=1e-3, epochs=3,
                                                                       ensemble_size=0),
        normalization_samples=[(PROMPTS[i], s.text, s.ended, s.token_ids) for i, g in enumerate(groups) for s in g],
    )
    return KeywordWorld(policy_dir, word, judged, root / "reward-model", result)


def keyword_samples(model_dir: Path, adapter_dir: Path | None = None) -> list[tuple]:
    """The policy's answers to the world's prompts (fixed seed), as (prompt, text, ended,
    token ids) for scoring."""
    model, tokenizer = load_policy(model_dir, adapter_dir)
    config = SamplingConfig(max_new_tokens=TOKENS, temperature=0.7, batch_size=64, seed=1234)
    groups = [g for batch in iter_sample_batches(model, tokenizer, PROMPTS, SAMPLES_PER_PROMPT, config) for g in batch]
    return [(PROMPTS[i], s.text, s.ended, s.token_ids) for i, group in enumerate(groups) for s in group]


def keyword_rate(word: str, model_dir: Path, adapter_dir: Path | None = None) -> float:
    """Share of the policy's answers (fixed prompts and seed) that contain the keyword."""
    texts = [text for _, text, _, _ in keyword_samples(model_dir, adapter_dir)]
    return sum(word in text.split() for text in texts) / len(texts)
