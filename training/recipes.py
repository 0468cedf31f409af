"""Recipes: the list of stages a round walks. Data, not code: the round's state machine
(training/services/rounds.py) walks the list, and each stage's behaviour is a peer in
training/services/stages.py."""

from __future__ import annotations

from dataclasses import dataclass

from training.ml.methods import REWARD_MODEL as READS_REWARD_MODEL
from training.ml.methods import method_named

REWARD_MODEL = "reward_model"
POLICY_UPDATE = "policy_update"
COMPARISONS = "comparisons"
EVALUATION = "evaluation"
DONE = "done"

STAGE_TITLES = {
    REWARD_MODEL: "Training the reward model",
    POLICY_UPDATE: "Updating the policy",
    COMPARISONS: "Generating comparisons",
    EVALUATION: "Evaluating on fixed prompts",
    DONE: "Done",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    stages: tuple[str, ...]
    summary: str


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("rlhf", "RLHF", (REWARD_MODEL, POLICY_UPDATE, COMPARISONS, EVALUATION),
               "train a reward model on every label, update the policy, queue comparisons from the new policy, "
               "evaluate"),
        Recipe("direct", "Update, then ask", (POLICY_UPDATE, COMPARISONS, EVALUATION),
               "update the policy from the pairs (DPO, SFT) or against the current reward model, queue comparisons "
               "from the new policy, evaluate"),
        Recipe("offline", "Offline", (POLICY_UPDATE, EVALUATION),
               "update the policy and evaluate; no new comparisons (the ablation Christiano et al. warned about)"),
    )
}


def recipe_named(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def default_recipe_for(method: str) -> str:
    """The recipe a run of `method` gets unless someone picks another: `rlhf` for a method
    that reads a reward model, `direct` for one that learns from the pairs alone (DPO,
    SFT on chosen), whose `rlhf` rounds would each train a reward model it never reads."""
    return "rlhf" if READS_REWARD_MODEL in method_named(method).needs else "direct"


def needs_reward_model(method: str, recipe: str) -> bool:
    """Whether a run's rounds train a reward model or its method reads one. A run that
    does neither gets no automatic reward-model training (one trained by hand still
    orders its queue and scores its evaluation answers)."""
    return READS_REWARD_MODEL in method_named(method).needs or REWARD_MODEL in recipe_named(recipe).stages
