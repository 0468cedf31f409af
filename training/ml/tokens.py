"""Token conventions every model in the loop shares.

Chat models often use their end-of-turn token as pad (SmolLM2: pad = EOS = <|im_end|>).
TRL's PPO masks every pad-id token as padding, which would hide each <|im_end|> inside
the chat-templated prompt and make "did the response end?" unanswerable. So the loop
pads with a different token that never appears in templated text.

The reward model scores the position PPO scores: the response's EOS when the response
ended, its last token when it was cut at the length limit. So reward inputs are the
templated prompt, the answer, and the EOS only if the answer ended (the chat template
would add EOS and a newline to every answer). The answer's tokens are the ones the
policy generated when we have them: re-encoding the decoded text gives different
tokens for about half of sampled answers (measured on SmolLM2-135M at temperature 0.8),
and a reward model trained on the re-encoded text scores the policy's real outputs off
its training distribution. Text we did not generate (imports, outside systems) is
tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence

PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "<unk>", "<|finetune_right_pad_id|>")


class TokenizerError(ValueError):
    """The tokenizer lacks something the loop needs; the message says what."""


def use_distinct_pad(tokenizer):
    """Set a pad token that differs from EOS, keeping an existing one that already does."""
    if tokenizer.eos_token_id is None:
        raise TokenizerError("the tokenizer has no EOS token; PrefLoop needs one to end completions")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    vocab = tokenizer.get_vocab()
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False
    )
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id and candidate not in probe:
            tokenizer.pad_token = candidate
            return tokenizer
    raise TokenizerError(
        f"no pad token distinct from EOS ({tokenizer.eos_token!r}); give the model a pad token "
        f"(one of {', '.join(PAD_CANDIDATES)}) before using it as the base"
    )


def answer_input_ids(tokenizer, completion: str, ended: bool = True,
                     token_ids: Sequence[int] | None = None) -> list[int]:
    """An answer as the policy produces it: its tokens (as generated, when given) and
    EOS if it ended. What every method trains on and the reward model scores."""
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"] if token_ids is None else token_ids
    return list(answer) + ([tokenizer.eos_token_id] if ended else [])


def reward_input_ids(tokenizer, prompt: list[dict], completion: str, ended: bool = True,
                     token_ids: Sequence[int] | None = None) -> list[int]:
    """What PPO hands the reward model for this answer: the prompt as the policy saw it,
    then the answer (see answer_input_ids)."""
    return prompt_input_ids(tokenizer, prompt) + answer_input_ids(tokenizer, completion, ended, token_ids)


def prompt_input_ids(tokenizer, prompt: list[dict]) -> list[int]:
    """The chat template over the prompt, ending where the assistant's answer begins."""
    return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


ScoredText = tuple  # (prompt messages, completion text[, ended[, generated token ids or None]])


def reward_inputs(tokenizer, samples: Sequence[ScoredText]) -> list[list[int]]:
    return [reward_input_ids(tokenizer, *sample) for sample in samples]
