"""How PrefLoop builds a reward model's input, and scoring an exported reward model with it.

This file is the one definition of the input: the app scores with these functions
(training/ml/tokens.py takes them from here), and every reward-model export carries a
verbatim copy of this file as `score.py`, so that scoring outside PrefLoop is the
app's scoring. It imports only the standard library at the top, and torch and
transformers where it loads a model: nothing of PrefLoop.

The input of one answer, as token ids:

1. the chat template over the prompt's turns with `add_generation_prompt=True`
   (the templated prompt ends where the assistant's answer begins);
2. the answer's text tokenized alone, without special tokens;
3. the EOS token id, once, if the answer ended; nothing after it. Rendering the
   answer through the chat template instead closes it with EOS *and a newline*, and
   the reward model reads the newline's position: scores move by up to ~2 (normalized);
4. an export trained with left truncation reads only the last
   `prefloop_reward_keep_last_tokens` tokens of that (config.json; null: all of them).

The score is the model's logit at the last token that is not padding (right padding
with the tokenizer's pad token, which differs from EOS), normalized with the config's
`prefloop_reward_mean` and `prefloop_reward_std`: (logit - mean) / std.

Outside PrefLoop, from the export's folder:

    from score import score
    score([{"role": "user", "content": "Hi!"}], "Hello! How can I help?")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def prompt_input_ids(tokenizer, prompt: list[dict]) -> list[int]:
    """The chat template over the prompt, ending where the assistant's answer begins."""
    return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


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


def keep_last_tokens(ids: Sequence[Sequence[int]], keep_last: int | None) -> list[list[int]]:
    """Left truncation: each input's last `keep_last` tokens (the answer, and as much of
    the dialog before it as fits); None keeps every input whole."""
    return [list(tokens[-keep_last:]) if keep_last else list(tokens) for tokens in ids]


class ExportedRewardModel:
    """A reward-model export loaded for scoring: `score` gives the normalized rewards
    the app gives the same answers."""

    def __init__(self, folder: Path | str | None = None, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        config = self.model.config
        self.mean = float(getattr(config, "prefloop_reward_mean", 0.0))
        self.std = float(getattr(config, "prefloop_reward_std", 1.0))
        self.keep_last = getattr(config, "prefloop_reward_keep_last_tokens", None)
        self.pad_token_id = config.pad_token_id

    def input_ids(self, prompt: list[dict], answer: str, ended: bool = True) -> list[int]:
        return keep_last_tokens([reward_input_ids(self.tokenizer, prompt, answer, ended)], self.keep_last)[0]

    def score(self, items: Sequence[tuple], batch_size: int = 16) -> list[float]:
        """Normalized rewards of (prompt messages, answer[, ended]) items, in order."""
        import torch

        ids = [self.input_ids(*item) for item in items]
        device = next(self.model.parameters()).device
        rewards: list[float] = []
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            longest = max(len(tokens) for tokens in batch)
            input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for row, tokens in enumerate(batch):  # right padding: the head reads the last real token
                input_ids[row, : len(tokens)] = torch.tensor(tokens)
                attention[row, : len(tokens)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            rewards += ((logits[:, 0].float().cpu() - self.mean) / self.std).tolist()  # (batch,)
        return rewards


_loaded: ExportedRewardModel | None = None


def score(prompt_messages: list[dict], answer: str, ended: bool = True) -> float:
    """The normalized reward of one answer, by the export this file sits in (loaded on
    the first call). `ended`: False for an answer cut off before its EOS."""
    global _loaded
    if _loaded is None:
        _loaded = ExportedRewardModel()
    return _loaded.score([(prompt_messages, answer, ended)])[0]


if __name__ == "__main__":
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description="Score answers with this reward-model export. Reads JSON lines "
                                                 '{"prompt": [messages], "answer": "...", "ended": true} on stdin '
                                                 "and writes one normalized reward a line.")
    parser.add_argument("--model", default=None, help="the export folder (default: the one this file is in)")
    arguments = parser.parse_args()
    exported = ExportedRewardModel(arguments.model)
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    for reward in exported.score([(row["prompt"], row["answer"], row.get("ended", True)) for row in rows]):
        print(reward)
