"""Policy-update methods: the ways to turn preference labels into a better policy, as
peers in one registry. Each method is one module in this package, readable top to
bottom: a config dataclass, `train(inputs, out_dir, config, on_step)` and a command line
(`python -m training.ml.methods.<name> --help`). Each declares what it needs:

- `reward_model`: a published reward model to score samples (PPO, RLOO, GRPO, online
  DPO, best-of-N);
- `pairs`: the run's (chosen, rejected) preference pairs (DPO, SFT on chosen answers);
- `prompts`: prompts to sample from (every method that samples).

No Django here: the training app gathers the inputs a method declares, calls `train`,
and publishes the adapter it writes.
"""

from __future__ import annotations

from training.ml.methods import best_of_n, dpo, grpo, online_dpo, ppo, rloo, sft_chosen
from training.ml.methods.base import PAIRS, PROMPTS, REWARD_MODEL, Method, TrainingInputs, TrainingResult

# Config modules are light (dataclasses only); each trainer imports TRL when it trains.
METHODS: dict[str, Method] = {
    module.METHOD.name: module.METHOD for module in (ppo, rloo, grpo, online_dpo, dpo, best_of_n, sft_chosen)
}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "PAIRS", "PROMPTS", "REWARD_MODEL", "Method", "TrainingInputs", "TrainingResult",
           "method_named"]
