"""A client of PrefLoop's reward-model server (training/ml/reward_server.py), usable as a
TRL reward function. Standard library only and no PrefLoop imports: copy this file into
a training script's project as it is.

    from reward_client import RewardServerClient
    rewards = RewardServerClient("http://127.0.0.1:8100", token="plk_...")
    rewards.score([{"prompt": [{"role": "user", "content": "Hi!"}], "answer": "Hello!"}])
    trl.GRPOTrainer(model=..., reward_funcs=rewards, train_dataset=conversational_prompts, ...)

TRL calls a reward function with `prompts=`, `completions=`, `completion_ids=` and the
dataset's other columns as keywords. With conversational prompts (lists of messages) a
completion is `[{"role": "assistant", "content": text}]`; the server builds the reward
input from the messages exactly as PrefLoop does. Give `eos_token_id` (the policy
tokenizer's) and an answer whose `completion_ids` hold no EOS is scored as cut off, as
PrefLoop scores it, and `missing_eos_penalty` is subtracted from its reward.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence


class RewardServerError(RuntimeError):
    """The server refused or failed a request; `status` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"reward server answered {status}: {message}" if status else message)
        self.status = status


class RewardServerClient:
    """Normalized rewards from a PrefLoop reward-model server; a TRL reward function."""

    def __init__(self, url: str, token: str, timeout: float = 120.0, eos_token_id: int | None = None,
                 missing_eos_penalty: float = 0.0, items_per_request: int = 256) -> None:
        self.__name__ = "prefloop_reward_model"  # TRL names the logged reward column after it
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.eos_token_id, self.missing_eos_penalty = eos_token_id, missing_eos_penalty
        self.items_per_request = items_per_request
        self.reward_model: dict | None = None
        """The version that scored the last request (number, run, normalization...)."""

    def score(self, items: Sequence[dict]) -> list[float]:
        """Rewards of {"prompt": [messages], "answer": text, "ended": bool} items, in order,
        sent in requests of at most `items_per_request`."""
        rewards: list[float] = []
        for start in range(0, len(items), self.items_per_request):
            answer = self.post("/v1/rewards", {"items": list(items[start : start + self.items_per_request])})
            rewards += answer["rewards"]
            self.reward_model = answer["reward_model"]
        return rewards

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        items = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            if isinstance(prompt, str):
                raise TypeError("PrefLoop's reward model scores chat messages: give the trainer a conversational "
                                "dataset (prompts as lists of {'role', 'content'} messages)")
            text = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
            ended = True
            if self.eos_token_id is not None and completion_ids is not None:
                ended = self.eos_token_id in completion_ids[i]
            items.append({"prompt": list(prompt), "answer": text, "ended": ended})
        rewards = self.score(items)
        return [r - (0.0 if item["ended"] else self.missing_eos_penalty) for r, item in zip(rewards, items,
                                                                                            strict=True)]

    def post(self, path: str, payload: dict) -> dict:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                message = error.reason
            raise RewardServerError(error.code, message) from None
        except urllib.error.URLError as error:
            raise RewardServerError(0, f"no answer from {self.url}: {error.reason}") from None
