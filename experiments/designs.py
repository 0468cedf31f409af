"""Experiment designs: a TOML file that names a kind of design, the base model, the label
budget, rounds, seeds, the gold judge and settings, parsed into a checked `Design`.
Design kinds are peers in `DESIGN_KINDS`: each turns a design into its arms. No Django.

Example (docs/experiments.md explains every key):

    name = "online vs offline"
    kind = "online_vs_offline"          # or active_vs_random, methods
    base_model_dir = "var/models/smollm2-135m-instruct"
    label_budget = 64                   # labels per arm and seed, whatever the schedule
    rounds = 2
    seeds = [1, 2, 3]

    [gold]
    oracle = "shorter_no_apology"       # or model_dir = "path/to/hf-sequence-classifier"
    noise = 0.1                         # share of random answers (Christiano et al.: ~10%)
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from training.ml.methods import method_named

ONLINE, OFFLINE = "online", "offline"

RUN_SETTING_KEYS = {"method", "query_selection", "update_prompts", "reward_config", "method_config"}


class DesignError(ValueError):
    """A design file that cannot be run as written; the message says why."""


@dataclass(frozen=True)
class GoldSpec:
    oracle: str = ""
    """A scripted oracle (labeling/oracles.py): a name or keyword:WORD."""
    model_dir: str = ""
    """Or a local Hugging Face sequence-classification model (one label) as the gold reward."""
    noise: float = 0.1
    """Share of the simulated annotator's answers that are random."""


@dataclass(frozen=True)
class Arm:
    """One arm: a schedule (online: labels spread over rounds on the current policy's
    comparisons; offline: every label up front on the base policy's) and run settings."""

    name: str
    schedule: str
    settings: dict = field(default_factory=dict)
    """Run settings over the design's [run] table: method, query_selection, update_prompts,
    reward_config, method_config."""


@dataclass(frozen=True)
class Design:
    name: str
    kind: str
    base_model_dir: str
    label_budget: int
    """Labels per arm and seed."""
    rounds: int
    """Policy updates per arm and seed."""
    seeds: tuple[int, ...]
    gold: GoldSpec
    candidate_factor: float = 1.0
    """Comparisons generated per label to spend: above 1, query selection has a choice."""
    methods: tuple[str, ...] = ()
    """The arms of a `methods` design."""
    run: dict = field(default_factory=dict)
    """Run settings every arm starts from (see Arm.settings)."""
    arm_settings: dict = field(default_factory=dict)
    """Per-arm overrides, by arm name."""
    max_new_tokens: int = 48
    temperature: float = 0.7
    evaluation_prompts: int = 16
    kl_samples: int = 1
    """Answers per evaluation prompt for the KL estimate; 0 skips KL."""

    def arms(self) -> list[Arm]:
        arms = []
        for arm in DESIGN_KINDS[self.kind](self):
            shared = self.run
            if arm.settings.get("method", shared.get("method")) != shared.get("method"):
                # [run]'s method_config belongs to [run]'s method; another method starts
                # from its own defaults (and [arms.NAME] overrides).
                shared = {k: v for k, v in shared.items() if k != "method_config"}
            settings = merge_settings(merge_settings(shared, arm.settings), self.arm_settings.get(arm.name, {}))
            arms.append(Arm(arm.name, arm.schedule, settings))
        return arms

    def label_batches(self, schedule: str) -> list[int]:
        """Labels spent before each round: all up front offline, spread evenly online."""
        if schedule == OFFLINE:
            return [self.label_budget]
        share, extra = divmod(self.label_budget, self.rounds)
        return [share + (1 if i < extra else 0) for i in range(self.rounds)]


def merge_settings(base: dict, overrides: dict) -> dict:
    """Overrides win; the config tables merge key by key."""
    merged = {**base, **overrides}
    for key in ("reward_config", "method_config"):
        if key in base or key in overrides:
            merged[key] = {**base.get(key, {}), **overrides.get(key, {})}
    return merged


DESIGN_KINDS: dict[str, Callable[[Design], list[Arm]]] = {
    "online_vs_offline": lambda design: [Arm(ONLINE, ONLINE), Arm(OFFLINE, OFFLINE)],
    "active_vs_random": lambda design: [Arm("active", ONLINE, {"query_selection": "disagreement"}),
                                        Arm("random", ONLINE, {"query_selection": "random"})],
    # Every method learns from the same labels: all up front, on the base policy's
    # comparisons, which the same seed samples and labels alike in every arm.
    "methods": lambda design: [Arm(name, OFFLINE, {"method": name})
                               for name in design.methods],
}


def parse_design(text: str, base_dir: Path | None = None) -> Design:
    """A checked design from TOML text; relative model paths resolve against `base_dir`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DesignError(f"not valid TOML: {error}") from None
    return design_from_dict(raw, base_dir)


def design_from_dict(raw: dict, base_dir: Path | None = None) -> Design:
    known = {"name", "kind", "base_model_dir", "label_budget", "rounds", "seeds", "gold", "candidate_factor",
             "methods", "run", "arms", "max_new_tokens", "temperature", "evaluation_prompts", "kl_samples"}
    if unknown := set(raw) - known:
        raise DesignError(f"unknown keys: {', '.join(sorted(unknown))}")
    for key in ("name", "kind", "base_model_dir", "label_budget", "rounds", "seeds", "gold"):
        if key not in raw:
            raise DesignError(f"the design needs {key!r}")
    if raw["kind"] not in DESIGN_KINDS:
        raise DesignError(f"unknown kind {raw['kind']!r}; choose one of {', '.join(DESIGN_KINDS)}")
    gold = dict(raw["gold"])
    if set(gold) - {"oracle", "model_dir", "noise"}:
        raise DesignError("[gold] takes oracle or model_dir, and noise")
    if bool(gold.get("oracle")) == bool(gold.get("model_dir")):
        raise DesignError("[gold] needs exactly one of oracle and model_dir")
    if not 0.0 <= float(gold.get("noise", 0.1)) <= 1.0:
        raise DesignError("gold noise must be between 0 and 1")

    def resolve(path: str) -> str:
        return str((base_dir / path).resolve()) if base_dir and path and not Path(path).is_absolute() else path

    gold_spec = GoldSpec(gold.get("oracle", ""), resolve(gold.get("model_dir", "")), float(gold.get("noise", 0.1)))
    for table in [raw.get("run", {}), *raw.get("arms", {}).values()]:
        if unknown := set(table) - RUN_SETTING_KEYS:
            raise DesignError(f"run settings take {', '.join(sorted(RUN_SETTING_KEYS))}; not {', '.join(unknown)}")
    design = Design(
        name=str(raw["name"]), kind=raw["kind"], base_model_dir=resolve(str(raw["base_model_dir"])),
        label_budget=int(raw["label_budget"]), rounds=int(raw["rounds"]), seeds=tuple(int(s) for s in raw["seeds"]),
        gold=gold_spec, candidate_factor=float(raw.get("candidate_factor", 1.0)),
        methods=tuple(raw.get("methods", ())), run=dict(raw.get("run", {})), arm_settings=dict(raw.get("arms", {})),
        max_new_tokens=int(raw.get("max_new_tokens", 48)), temperature=float(raw.get("temperature", 0.7)),
        evaluation_prompts=int(raw.get("evaluation_prompts", 16)), kl_samples=int(raw.get("kl_samples", 1)),
    )
    check_design(design)
    return design


def check_design(design: Design) -> None:
    if design.rounds < 1 or design.label_budget < design.rounds:
        raise DesignError("an experiment needs at least one round and at least one label per round")
    if not design.seeds or len(set(design.seeds)) != len(design.seeds):
        raise DesignError("seeds must be a list of distinct integers")
    if design.candidate_factor < 1.0:
        raise DesignError("candidate_factor must be at least 1 (a comparison per label)")
    if design.kind == "methods" and len(design.methods) < 2:
        raise DesignError("a methods design lists at least two methods")
    arms = design.arms()
    if unknown := set(design.arm_settings) - {arm.name for arm in arms}:
        raise DesignError(f"[arms] names arms this design does not have: {', '.join(sorted(unknown))}")
    for arm in arms:
        try:
            method_named(arm.settings.get("method", "ppo"))
        except ValueError as error:
            raise DesignError(str(error)) from None


def design_to_dict(design: Design) -> dict:
    """What the experiment row keeps (and design_from_dict reads back)."""
    return {"name": design.name, "kind": design.kind, "base_model_dir": design.base_model_dir,
            "label_budget": design.label_budget, "rounds": design.rounds, "seeds": list(design.seeds),
            "gold": {k: v for k, v in design.gold.__dict__.items() if v != ""},
            "candidate_factor": design.candidate_factor, "methods": list(design.methods), "run": design.run,
            "arms": design.arm_settings, "max_new_tokens": design.max_new_tokens, "temperature": design.temperature,
            "evaluation_prompts": design.evaluation_prompts, "kl_samples": design.kl_samples}
