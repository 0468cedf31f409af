"""Gold judges: the hidden reward an experiment measures policies by, and the simulated
annotator that labels its arms' comparisons from it (with random answers at the noise
rate). Peers in `GOLD_JUDGES`: a scripted oracle (labeling/oracles.py) or a gold reward
model from a local Hugging Face sequence-classification directory (Gao et al. 2022's
setting: the gold model labels, the proxy reward model learns from those labels). No
Django here; gold scores never leave the experiments app."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labeling.oracles import OracleJudgement, judge, oracle_named

Answer = tuple[list[dict], str, bool]
"""(prompt messages, answer text, whether it ended with EOS)."""


class GoldJudge:
    """Scores answers with the hidden gold reward; higher is better."""

    description: str

    def score(self, answers: Sequence[Answer]) -> list[float]:
        raise NotImplementedError


@dataclass
class ScriptedGold(GoldJudge):
    """A scripted oracle: a function of the answer's text alone."""

    oracle: str

    def __post_init__(self):
        self.function = oracle_named(self.oracle)
        self.description = f"oracle {self.oracle}"

    def score(self, answers: Sequence[Answer]) -> list[float]:
        return [float(self.function(text)) for _, text, _ in answers]


@dataclass
class GoldRewardModel(GoldJudge):
    """A reward model nobody trains here, read as the truth: its scalar output on the
    chat-templated prompt and answer, tokenized the way our reward models read them."""

    model_dir: str
    batch_size: int = 16

    def __post_init__(self):
        from training.ml.reward_loading import load_reward_backbone, load_reward_tokenizer

        if not Path(self.model_dir).is_dir():
            raise ValueError(f"gold model directory {self.model_dir} does not exist")
        self.tokenizer = load_reward_tokenizer(self.model_dir)
        self.model = load_reward_backbone(self.model_dir, self.tokenizer).eval()
        self.description = f"gold reward model {self.model_dir}"

    def score(self, answers: Sequence[Answer]) -> list[float]:
        from training.ml.reward_scoring import score_texts

        if not answers:
            return []
        # Token ids are re-derived from the text: the gold model may tokenize differently.
        samples = [(messages, text, ended, None) for messages, text, ended in answers]
        return score_texts(self.model, self.tokenizer, samples, self.batch_size).tolist()


GOLD_JUDGES: dict[str, Callable[[str], GoldJudge]] = {
    "oracle": ScriptedGold,
    "model_dir": GoldRewardModel,
}


def gold_judge(oracle: str = "", model_dir: str = "") -> GoldJudge:
    """The judge a design's [gold] table names (exactly one of the two)."""
    chosen = [(kind, value) for kind, value in (("oracle", oracle), ("model_dir", model_dir)) if value]
    if len(chosen) != 1:
        raise ValueError("a gold judge is either a scripted oracle or a gold model directory")
    kind, value = chosen[0]
    return GOLD_JUDGES[kind](value)


def simulated_judgement(scores: Sequence[float], texts: Sequence[str], prompt_key: str, noise: float,
                        seed: int) -> OracleJudgement:
    """The simulated annotator's label for answers shown in this order, given their gold
    scores. Its dice are drawn from the content (seed, prompt, the set of answers), not
    from the display order or the labeling order, so arms at the same seed that meet the
    same pair get the same label, noise included."""
    by_text = dict(zip(texts, scores, strict=True))
    rng = random.Random(f"{seed}\x1f{prompt_key}\x1f" + "\x1f".join(sorted(texts)))
    if len(texts) == 2 and rng.random() < noise:
        return OracleJudgement("a" if texts[0] == rng.choice(sorted(texts)) else "b")
    return judge(by_text.__getitem__, texts, 0.0 if len(texts) == 2 else noise, rng)
