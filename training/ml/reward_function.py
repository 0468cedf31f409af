"""Our reward model as a TRL reward function, for the methods that sample and score
(RLOO, GRPO, online DPO).

TRL can take a sequence-classification model directly, but then it re-renders the
conversation with the chat template, which closes every answer with EOS and a newline,
ended or not. Our reward model is trained on what PPO scores: the templated prompt, the
answer's tokens and EOS only if the answer ended (training/ml/tokens.py). So we pass a
callable that scores the token ids the policy actually produced, normalized like PPO's
rewards, with PPO's penalty for an answer that never ended.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.ml.reward_features import keep_last_tokens, score_token_ids
from training.ml.reward_loading import input_limit, load_reward_model
from training.ml.reward_scoring import RewardModelRef
from training.ml.tokens import prompt_input_ids


def answer_ids(completion_ids: Sequence[int], eos_token_id: int) -> tuple[list[int], bool]:
    """The answer as the reward model reads it: tokens up to and including the first
    EOS (whatever a trainer padded after it is dropped), and whether it ended."""
    ids = list(completion_ids)
    if eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1], True
    return ids, False


class RewardModelFunction:
    """Callable with TRL's custom reward signature, returning one normalized reward per
    completion: (raw - mean) / std, minus `missing_eos_penalty` for an answer cut at the
    length limit."""

    def __init__(self, ref: RewardModelRef, policy_tokenizer, missing_eos_penalty: float = 0.0,
                 device: torch.device | None = None, precision=None, batch_size: int = 16) -> None:
        self.__name__ = "reward_model"  # TRL names logged reward columns after it
        self.model, _ = load_reward_model(ref.base_model_dir, ref.weights_dir, device, precision, ref.quantization)
        self.tokenizer = policy_tokenizer  # same vocabulary; its pad differs from EOS
        self.mean, self.std = ref.mean, ref.std
        self.missing_eos_penalty = missing_eos_penalty
        self.batch_size = batch_size
        self.keep_last = input_limit(ref.weights_dir)  # left truncation, as the version was trained

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        inputs, ended = [], []
        for prompt, ids in zip(prompts, completion_ids, strict=True):
            answer, did_end = answer_ids(ids, self.tokenizer.eos_token_id)
            inputs.append(prompt_input_ids(self.tokenizer, prompt) + answer)
            ended.append(did_end)
        raw, _ = score_token_ids(self.model, self.tokenizer.pad_token_id, keep_last_tokens(inputs, self.keep_last),
                                 self.batch_size)
        rewards = (raw - self.mean) / self.std
        return [float(r) - (0.0 if e else self.missing_eos_penalty) for r, e in zip(rewards, ended, strict=True)]
