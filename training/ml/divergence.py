"""How far a policy moved from its reference: a Monte-Carlo estimate of
KL(policy ‖ reference) per answer. Answers are sampled from the policy itself at
temperature 1 with no top-p (its own distribution; a tempered sample would estimate
something else), and for each answer the log-probability under both models is summed
over its tokens, EOS included when it ended:

    KL ≈ mean over answers of  Σ_t log π(a_t | p, a_<t) − log π_ref(a_t | p, a_<t)

The same quantity PPO's `objective/kl` reports with the k1 estimator, measured after
training and the same way for every method, so methods can be compared on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.ml.generation import SamplingConfig, iter_sample_batches
from training.ml.tokens import answer_input_ids, prompt_input_ids


@dataclass(frozen=True)
class KLEstimate:
    mean: float
    """Nats per answer."""
    stderr: float
    """Standard error of the mean over answers."""
    answers: int


@torch.inference_mode()
def answer_log_prob(model, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Σ log p(answer token | everything before it) under `model`."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(1, ids[0, len(prompt_ids) :, None]).sum().item()


def sampled_kl(policy, reference, tokenizer, prompts: Sequence[list[dict]], samples_per_prompt: int = 2,
               max_new_tokens: int = 64, seed: int = 0) -> KLEstimate:
    """KL(policy ‖ reference) in nats per answer; both models share `tokenizer`."""
    # The policy's own distribution, untruncated (no top-k, no top-p): the estimate is
    # only unbiased for answers drawn from the very distribution whose log-probs it takes.
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=seed)
    differences = []
    prompt_ids = [prompt_input_ids(tokenizer, prompt) for prompt in prompts]
    start = 0
    for batch in iter_sample_batches(policy, tokenizer, prompts, samples_per_prompt, config):
        for offset, samples in enumerate(batch):
            ids = prompt_ids[start + offset]
            for sample in samples:
                answer = answer_input_ids(tokenizer, sample.text, sample.ended, sample.token_ids)
                if not answer:
                    continue
                differences.append(answer_log_prob(policy, ids, answer) - answer_log_prob(reference, ids, answer))
        start += len(batch)
    if not differences:
        raise ValueError("no answers to measure")
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / max(len(differences) - 1, 1)
    return KLEstimate(mean, math.sqrt(variance / len(differences)), len(differences))
