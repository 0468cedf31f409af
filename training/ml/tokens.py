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

# The input of one answer is defined once, in the file every reward-model export ships
# as score.py (so scoring outside PrefLoop is this scoring); it is re-exported here.
from training.ml.standalone_scoring import answer_input_ids, prompt_input_ids, reward_input_ids

__all__ = ["PAD_CANDIDATES", "ScoredText", "TokenizerError", "answer_input_ids", "prompt_input_ids",
           "reward_inputs", "reward_input_ids", "use_distinct_pad"]

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


ScoredText = tuple  # (prompt messages, completion text[, ended[, generated token ids or None]])


def reward_inputs(tokenizer, samples: Sequence[ScoredText]) -> list[list[int]]:
    return [reward_input_ids(tokenizer, *sample) for sample in samples]
