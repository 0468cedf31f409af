"""Scoring with a published reward model: the reference a policy method is handed
(`RewardModelRef`), the model with its normalization built in (for TRL's PPO, which reads
`logits`), rewards and score-head features of (prompt, completion) samples, and
`RewardScorer`, which the web app loads to score samples and rank comparisons by
ensemble disagreement. Loading a version's folder is training/ml/reward_loading.py;
training one is training/ml/reward_training.py. No Django.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from training.ml.reward_features import keep_last_tokens, score_token_ids
from training.ml.reward_heads import ensemble_disagreement
from training.ml.reward_loading import ENSEMBLE_FILE, input_limit, load_reward_model, score_head
from training.ml.tokens import ScoredText, reward_inputs


@dataclass(frozen=True)
class RewardModelRef:
    """A published reward model as a policy method uses it: its weights and the
    normalization (mean, std of raw rewards on the initial policy's samples)."""

    base_model_dir: Path
    weights_dir: Path
    mean: float = 0.0
    std: float = 1.0
    quantization: str = "none"
    """How its frozen weights load (training/ml/quantization.py): the run's setting."""


def normalized_reward_model(ref: RewardModelRef, device=None, precision=None):
    """The reward model with (r - mean) / std built into its score head, so a trainer
    that reads `logits` (TRL's PPO) sees normalized rewards without knowing about
    normalization. `precision`: as `load_reward_model` takes it."""
    model, _ = load_reward_model(ref.base_model_dir, ref.weights_dir, device, precision, ref.quantization)
    old = score_head(model)  # Linear(hidden, 1, bias=False) on Llama-style classifiers
    head = torch.nn.Linear(old.in_features, 1, bias=True, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight / ref.std)
        bias = old.bias if getattr(old, "bias", None) is not None else torch.zeros(1, device=old.weight.device)
        head.bias.copy_((bias - ref.mean) / ref.std)
    model.score = head
    return model


def score_features(
    model, tokenizer, samples: Sequence[ScoredText], batch_size: int = 16, keep_last: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (n,) and score-head features (n, hidden) of (prompt, completion[, ended])
    samples, tokenized as PPO hands them to the reward model (the last `keep_last`
    tokens of each, for a version trained with left truncation)."""
    return score_token_ids(model, tokenizer.pad_token_id,
                           keep_last_tokens(reward_inputs(tokenizer, samples), keep_last), batch_size)


def score_texts(model, tokenizer, samples: Sequence[ScoredText], batch_size: int = 16,
                keep_last: int | None = None) -> torch.Tensor:
    return score_features(model, tokenizer, samples, batch_size, keep_last)[0]


@dataclass
class RewardScorer:
    """A published reward model loaded for batch scoring. `score` returns normalized
    rewards (mean 0, std 1 on the initial policy); `disagreement` ranks comparisons for
    active query selection."""

    model: object
    tokenizer: object
    mean: float
    std: float
    heads: torch.Tensor | None
    keep_last: int | None = None
    """Left truncation, as the version was trained (`input_limit`)."""

    @classmethod
    def load(cls, base_model_dir: Path, weights_dir: Path, mean: float, std: float, device=None,
             precision=None, quantization: str | None = None) -> RewardScorer:
        """`precision`: the job's setting or a resolved precision; `quantization`: the
        run's frozen_quantization (load_reward_model)."""
        model, tokenizer = load_reward_model(base_model_dir, weights_dir, device, precision, quantization)
        heads_file = weights_dir / ENSEMBLE_FILE
        heads = torch.load(heads_file) if heads_file.is_file() else None
        return cls(model, tokenizer, mean, std, heads, input_limit(weights_dir))

    def score(self, samples: Sequence[ScoredText], batch_size: int = 16) -> torch.Tensor:
        """(n,) normalized rewards for (prompt messages, completion) samples."""
        return self.score_input_ids(reward_inputs(self.tokenizer, samples), batch_size)

    def score_input_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
        """(n,) normalized rewards of inputs already built (tokens.reward_input_ids), cut
        as the version was trained."""
        raw, _ = score_token_ids(self.model, self.tokenizer.pad_token_id, keep_last_tokens(ids, self.keep_last),
                                 batch_size)
        return (raw - self.mean) / self.std

    def disagreement(self, comparisons: Sequence[Sequence[ScoredText]]) -> list[float]:
        """One score per comparison (a list of its samples): higher means the ensemble
        is less sure which completion a person would prefer."""
        if self.heads is None:
            raise ValueError("this reward model was trained without an ensemble (ensemble_size=0)")
        flat = [sample for comparison in comparisons for sample in comparison]
        _, features = score_features(self.model, self.tokenizer, flat, keep_last=self.keep_last)
        scores, start = [], 0
        for comparison in comparisons:
            scores.append(ensemble_disagreement(self.heads, features[start : start + len(comparison)]))
            start += len(comparison)
        return scores
