"""Sampling completions from a policy: chat template, left-padded batches, temperature
sampling. Plain functions; the Django side decides what to store. Loading the policy is
in training/ml/loading.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled; stored with every completion it produced."""

    max_new_tokens: int = 96
    """Completions longer than this are cut and marked as not ended."""
    temperature: float = 0.8
    """0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    top_k: int = 50
    """Only the k likeliest tokens can be drawn (transformers' default); 0 = any token."""
    batch_size: int = 8
    """Prompts per `generate` call (each expands to samples_per_prompt sequences)."""
    seed: int = 0
    """Seeds torch before sampling, so a run can be repeated."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    text: str
    ended: bool
    """True when the model emitted EOS before max_new_tokens."""
    num_tokens: int
    token_ids: tuple[int, ...] | None = None
    """The answer's tokens as generated (EOS excluded). Decoding and re-encoding does
    not give them back for about half of sampled answers (sampling picks BPE splits the
    tokenizer would not), and the reward model must score what the policy produced."""


class NucleusDraw(LogitsProcessor):
    """Draws the next token the way transformers' sampling does (temperature, then
    top-k, then top-p, then a draw from what is left) and hands generate() scores on
    which that token alone is finite, so its greedy step takes it. transformers sorts
    the whole vocabulary (49,152 tokens for SmolLM2) for top-p and draws with
    `multinomial` over all of it, for every row at every token: that took three quarters
    of sampling time here. Among the k best tokens both cost next to nothing.
    (docs/benchmarks.md: sampling, before and after.)"""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.top_k, scores.shape[-1]) if self.top_k else scores.shape[-1]
        best, index = (scores / self.temperature).topk(k, dim=-1)  # likeliest first
        probs = best.softmax(dim=-1)
        if self.top_p < 1.0:
            # A token stays while the likelier ones before it hold less than top_p; the
            # likeliest always stays. multinomial renormalizes what is left.
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= self.top_p, 0.0)
        token = index.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def iter_sample_batches(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    samples_per_prompt: int,
    config: SamplingConfig,
) -> Iterator[list[list[Sample]]]:
    """Yield, batch by batch, `samples_per_prompt` samples for each conversation, in the
    order given, so a caller can store and report progress as it goes."""
    torch.manual_seed(config.seed)
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    batches = list(chunks(conversations, config.batch_size))
    for batch in tqdm(batches, desc="sampling", unit="batch"):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        # Each prompt repeated samples_per_prompt times, side by side (what
        # num_return_sequences does, which generate() allows only when it samples itself).
        encoded = {key: value.repeat_interleave(samples_per_prompt, dim=0) for key, value in encoded.items()}
        # The draw happens in NucleusDraw; generate()'s greedy step takes the drawn token.
        draw = [NucleusDraw(config.temperature, config.top_k, config.top_p)] if config.temperature > 0 else []
        output = model.generate(
            **encoded,
            do_sample=False,
            logits_processor=LogitsProcessorList(draw),
            max_new_tokens=config.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_id,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]  # (batch * samples_per_prompt, new)
        samples = [decode_sample(row, tokenizer, eos_id) for row in new_tokens]
        yield [samples[i : i + samples_per_prompt] for i in range(0, len(samples), samples_per_prompt)]


def decode_sample(tokens: torch.Tensor, tokenizer, eos_id: int) -> Sample:
    eos_positions = (tokens == eos_id).nonzero()
    ended = len(eos_positions) > 0
    kept = tokens[: eos_positions[0, 0]] if ended else tokens
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Sample(text=text, ended=ended, num_tokens=len(kept), token_ids=tuple(kept.tolist()))
