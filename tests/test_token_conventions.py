from __future__ import annotations

import pytest

from training.ml.tokens import TokenizerError, prompt_input_ids, reward_input_ids, use_distinct_pad

PROMPT = [{"role": "user", "content": "Name a colour."}]


def test_pad_differs_from_eos_and_never_appears_in_templated_text(gguf_tokenizer):
    tokenizer = use_distinct_pad(gguf_tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    templated = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": "Red."}], tokenize=True,
                                              return_dict=True)["input_ids"]
    assert tokenizer.pad_token_id not in templated


def test_reward_inputs_match_what_ppo_scores(gguf_tokenizer):
    """An answer that ended is the chat template up to and including its EOS (PPO keeps
    the EOS it sampled); one cut at the length limit has no EOS at all."""
    tokenizer = use_distinct_pad(gguf_tokenizer)
    templated = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": "Red."}], tokenize=True,
                                              return_dict=True)["input_ids"]
    ended = reward_input_ids(tokenizer, PROMPT, "Red.", ended=True)
    assert ended == list(templated[: len(ended)]) and ended[-1] == tokenizer.eos_token_id
    assert templated[len(ended):] == tokenizer("\n", add_special_tokens=False)["input_ids"]
    cut = reward_input_ids(tokenizer, PROMPT, "Red.", ended=False)
    assert cut == ended[:-1] and cut[: len(prompt_input_ids(tokenizer, PROMPT))] == prompt_input_ids(tokenizer, PROMPT)


def test_a_tokenizer_without_a_usable_pad_is_refused(gguf_tokenizer):
    class NoSpareTokens:
        eos_token_id, pad_token_id, eos_token = 2, 2, "<|im_end|>"

        def get_vocab(self):
            return {"<|im_end|>": 2}

        def apply_chat_template(self, messages, tokenize=False):
            return "<|im_end|>"

    with pytest.raises(TokenizerError, match="no pad token distinct from EOS"):
        use_distinct_pad(NoSpareTokens())
