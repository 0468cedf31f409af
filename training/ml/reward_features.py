"""What the score head reads of an answer: (prompt, completion) samples keyed by
content, their last-layer features computed from token ids in length-sorted batches,
and the store of them that a full version writes and its head refits reuse
(training/ml/reward_refit.py). No Django; reward_training.py trains and
reward_scoring.py scores with these."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from training.ml.preference_pairs import PreferencePair, chosen_texts, rejected_texts
from training.ml.standalone_scoring import keep_last_tokens
from training.ml.tokens import ScoredText, reward_inputs

FEATURES_FILE = "features.pt"
"""Score-head features of the answers a version embedded (training/ml/reward_refit.py)."""


@torch.inference_mode()
def score_token_ids(
    model, pad_token_id: int, ids: Sequence[Sequence[int]], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (n,) and the features the score head reads (n, hidden) of already
    tokenized inputs, in batches of similar length (sorted, so a batch is not mostly
    padding; results come back in the order given). Right padding, as in training: the
    head reads the last real token."""
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = model.score.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rewards = torch.zeros(len(ids))
    features: torch.Tensor | None = None
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [ids[i] for i in rows]
            longest = max(len(x) for x in batch)
            input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for row, tokens in enumerate(batch):
                input_ids[row, : len(tokens)] = torch.tensor(tokens)
                attention[row, : len(tokens)] = 1
            captured.clear()
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # (b, 1)
            last = last_scored_positions(input_ids, pad_token_id)  # (b,)
            batch_features = captured[0][torch.arange(len(batch)), last.to(device)].float().cpu()  # (b, hidden)
            if features is None:
                features = torch.zeros(len(ids), batch_features.shape[-1])
            rewards[rows] = logits[:, 0].float().cpu()
            features[rows] = batch_features
    finally:
        hook.remove()
    return rewards, features if features is not None else torch.zeros(0, 0)


def last_scored_positions(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """The position transformers' sequence classifiers read: the rightmost token that is
    not the pad id."""
    positions = torch.arange(input_ids.shape[-1])
    return (positions * (input_ids != pad_token_id)).argmax(-1)


class FeatureStore:
    """Score-head features by sample key: those a full version wrote, plus those of the
    refits since (training/ml/reward_refit.py). Answers longer than max_length are
    remembered as such and never embedded (one very long answer would need tens of GB of
    attention), as TRL never trains on them."""

    def __init__(self, head: torch.Tensor | None = None, bias: float = 0.0) -> None:
        self.index: dict[str, int] = {}
        self.rows: list[torch.Tensor] = []
        self.too_long: set[str] = set()
        self.head, self.bias = head, bias

    @classmethod
    def read(cls, files: Sequence[Path]) -> FeatureStore:
        store = cls()
        for path in files:
            saved = torch.load(path, weights_only=True)
            if saved.get("head") is not None and store.head is None:
                store.head, store.bias = saved["head"], float(saved.get("bias", 0.0))
            store.add(saved["keys"], saved["features"])
            store.too_long.update(saved.get("too_long", []))
        return store

    def add(self, keys: Sequence[str], features: torch.Tensor) -> None:
        for key, row in zip(keys, features, strict=True):
            if key not in self.index:
                self.index[key] = len(self.rows)
                self.rows.append(row)

    def has(self, sample: ScoredText) -> bool:
        return sample_key(sample) in self.index

    def missing(self, samples: Sequence[ScoredText]) -> list[ScoredText]:
        """Samples neither stored nor known to be too long, each once."""
        seen, missing = set(self.index) | self.too_long, []
        for sample in samples:
            key = sample_key(sample)
            if key not in seen:
                seen.add(key)
                missing.append(sample)
        return missing

    def embed(self, model, tokenizer, samples: Sequence[ScoredText], max_length: int,
              keep_last: int | None = None) -> tuple[list[ScoredText], torch.Tensor, list[ScoredText]]:
        """Run the missing samples within max_length tokens (all of them, cut to their last
        `keep_last` tokens, with left truncation) through the model and store their
        features. Returns (embedded samples, their features, samples too long)."""
        missing = self.missing(samples)
        ids = keep_last_tokens(reward_inputs(tokenizer, missing), keep_last)
        fits = [len(tokens) <= max_length for tokens in ids]
        kept = [sample for sample, ok in zip(missing, fits, strict=True) if ok]
        too_long = [sample for sample, ok in zip(missing, fits, strict=True) if not ok]
        hidden = self.head.shape[-1] if self.head is not None else 0
        features = torch.zeros(0, hidden)
        if kept:
            _, features = score_token_ids(model, tokenizer.pad_token_id,
                                          [tokens for tokens, ok in zip(ids, fits, strict=True) if ok])
        self.add([sample_key(sample) for sample in kept], features)
        self.too_long.update(sample_key(sample) for sample in too_long)
        return kept, features, too_long

    def scorable(self, pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
        """The pairs whose two answers both have features."""
        return [pair for pair in pairs if self.has(chosen_texts([pair])[0]) and self.has(rejected_texts([pair])[0])]

    def features(self, samples: Sequence[ScoredText]) -> torch.Tensor:
        if not samples:
            return torch.zeros(0, self.head.shape[-1] if self.head is not None else 0)
        return torch.stack([self.rows[self.index[sample_key(sample)]] for sample in samples])

    def rewards(self, samples: Sequence[ScoredText], head: torch.Tensor) -> torch.Tensor:
        """What the score head computes: features · head + its bias."""
        return self.features(samples) @ head + self.bias


def sample_key(sample: ScoredText) -> str:
    """A stable key for what the reward model reads of an answer: the prompt, the text,
    whether it ended and the generated tokens."""
    prompt, text, *rest = sample
    ended = rest[0] if rest else True
    ids = rest[1] if len(rest) > 1 else None
    payload = json.dumps([prompt, text, bool(ended), list(ids) if ids is not None else None], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def write_features(path: Path, samples: Sequence[ScoredText], features: torch.Tensor,
                   too_long: Sequence[ScoredText] = (), head: torch.Tensor | None = None, bias: float = 0.0) -> None:
    """A version's features file: its answers' keys and score-head features, the keys of
    answers too long to embed, and (in a full version's file) the trained head a refit
    starts from."""
    torch.save({"keys": [sample_key(sample) for sample in samples], "features": features.float().contiguous(),
                "too_long": [sample_key(sample) for sample in too_long],
                "head": None if head is None else head.float().clone(), "bias": bias}, path)
