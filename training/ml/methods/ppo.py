"""PPO with TRL's `trl.experimental.ppo.PPOTrainer` (trl 1.9.2), as InstructGPT ran it:
the policy is a LoRA adapter on the base model, the reward is a published reward model
with its normalization folded into the score head, the value model starts from that
reward model (Ouyang et al. 2022), a KL penalty keeps the policy near the reference (the
base by default), and an answer that never ends is penalized.

Two things make a round cheaper than TRL run as its examples show, without changing a
number TRL reads (docs/benchmarks.md, "PPO round"): by default the value model is a head
on the reward model's frozen features, computed once per rollout (`FeatureHeadCritic`),
and the policy computes vocabulary logits only where TRL reads them
(`response_logits_only`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from training.ml.configs import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_TEMPERATURE,
    bounded,
    require,
)
from training.ml.loading import AdapterReference, add_reference_adapter
from training.ml.methods.base import (
    CHECKPOINTING_KWARGS,
    PROMPTS,
    REWARD_MODEL,
    Curve,
    Method,
    TrainingInputs,
    TrainingResult,
    set_up,
    train_and_save,
)
from training.ml.methods.cli import run_cli
from training.ml.progress import StepReport, report_steps
from training.ml.reward_loading import input_limit
from training.ml.reward_scoring import normalized_reward_model
from training.ml.tokens import prompt_input_ids

log = logging.getLogger(__name__)

# TRL's log keys, under the names our pages use.
METRIC_NAMES = {
    "objective/scores": "ppo/reward",
    "objective/rlhf_reward": "ppo/rlhf_reward",
    "objective/kl": "ppo/kl",
    "objective/entropy": "ppo/entropy",
    "objective/non_score_reward": "ppo/kl_penalty",
    "policy/clipfrac_avg": "ppo/clip_fraction",
    "policy/approxkl_avg": "ppo/approx_kl",
    "loss/policy_avg": "ppo/policy_loss",
    "loss/value_avg": "ppo/value_loss",
    "val/num_eos_tokens": "ppo/eos_count",
    "eps": "ppo/episodes_per_second",
    "episode": "ppo/episode",
}


@dataclass
class PPOConfig:
    """How one PPO update runs; saved with the policy version it produced."""

    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Rollouts per PPO update."""
    num_mini_batches: int = bounded(1, minimum=1, maximum=MAX_BATCH)
    """Minibatches each rollout batch is split into for the updates."""
    ppo_epochs: int = bounded(4, minimum=1, maximum=MAX_EPOCHS)
    """Optimization passes over each rollout batch."""
    total_episodes: int | None = bounded(None, minimum=1, maximum=1_000_000)
    """Rollouts in the update; empty means one per prompt (at least one batch)."""
    response_length: int = bounded(64, minimum=1, maximum=MAX_NEW_TOKENS)
    """New tokens per rollout."""
    temperature: float = bounded(0.7, above=0, maximum=MAX_TEMPERATURE)
    """Sampling temperature of the rollouts."""
    learning_rate: float = bounded(3e-5, above=0, maximum=MAX_LEARNING_RATE)
    """For the LoRA adapter and the value model."""
    kl_coef: float = bounded(0.05, minimum=0, maximum=10)
    """Weight of the KL penalty to the reference policy."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """TRL's KL estimator: k1 (plain) or k3 (lower variance)."""
    missing_eos_penalty: float = bounded(1.0, minimum=0, maximum=100)
    """Subtracted from the score of a rollout that never ends."""
    cliprange: float = bounded(0.2, above=0, below=1)
    """PPO's policy ratio clip."""
    vf_coef: float = bounded(0.1, minimum=0, maximum=10)
    """Weight of the value loss."""
    value_model: Literal["head", "lora", "full"] = "head"
    """The value model starts from the reward model. "head": a trained linear head on the
    reward model's own frozen last-layer features, computed once per rollout and reused by
    every PPO epoch (no second backbone in memory, no value forward or backward through
    one); "lora": a copy of the reward model learning a LoRA adapter (rank lora_r) and its
    head; "full": a copy whose every weight trains, as in TRL's examples."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """Rank of a new policy adapter (a continued adapter keeps its own)."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    reference: Literal["initial", "previous"] = "initial"
    """KL reference: the base model, or the version this update starts from."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds sampling and initialization."""

    def validate(self) -> None:
        """The rules joining two fields; each field's own range is on the field."""
        require(self.batch_size % self.num_mini_batches == 0,
                f"batch_size must be a multiple of num_mini_batches ({self.num_mini_batches})", field="batch_size")


def train(inputs: TrainingInputs, out_dir: Path, config: PPOConfig,
          on_step: StepReport | None = None) -> TrainingResult:
    """One PPO update from `inputs.start`; writes the adapter into `out_dir` (callers
    publish it by renaming)."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig
    from trl.experimental.ppo import PPOTrainer

    if inputs.frozen_quantization != "none" and config.value_model != "head":
        # Its own value model is a copy of the reward model made trainable, which a
        # 4-bit model cannot be (transformers refuses .float() on it).
        raise ValueError(f"PPO's value_model {config.value_model!r} trains a copy of the reward model, which "
                         f"frozen_quantization {inputs.frozen_quantization!r} loads in 4 bits; use value_model "
                         "'head' or frozen_quantization 'none'")
    setup = set_up(inputs.start, out_dir, seed=config.seed, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                   precision=inputs.precision, gradient_checkpointing=inputs.gradient_checkpointing,
                   quantization=inputs.frozen_quantization)
    device, tokenizer = setup.device, setup.tokenizer
    reward_model = normalized_reward_model(inputs.reward_model, device, setup.precision)
    value_model = critic(reward_model, config)  # before the window below: values read whole rollouts
    read_last_tokens(reward_model, input_limit(inputs.reward_model.weights_dir))
    # The reference is the policy's own base, its adapter switched off, or (reference
    # "previous") its start's adapter loaded again, frozen: never a second model.
    reference_adapter = add_reference_adapter(setup.policy, inputs.start, config.reference)
    dataset = Dataset.from_dict({"input_ids": [prompt_input_ids(tokenizer, p) for p in inputs.prompts]})
    episodes = config.total_episodes or max(len(inputs.prompts), config.batch_size)

    args = TRLPPOConfig(
        output_dir=str(setup.work_dir),
        per_device_train_batch_size=config.batch_size,
        local_rollout_forward_batch_size=config.batch_size,
        num_mini_batches=config.num_mini_batches,
        num_ppo_epochs=config.ppo_epochs,
        total_episodes=episodes,
        response_length=config.response_length,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator,
        missing_eos_penalty=config.missing_eos_penalty,
        cliprange=config.cliprange,
        vf_coef=config.vf_coef,
        stop_token="eos",
        seed=config.seed,
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        use_cpu=device.type == "cpu",
        **setup.precision.trainer_flags,
        gradient_checkpointing=setup.gradient_checkpointing,
        gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
    )
    history: list[dict] = []
    report = report_steps(history, on_step, lambda key: METRIC_NAMES.get(key, f"ppo/{key}"))
    with accelerate_mixed_precision(setup.precision.mixed_precision):
        trainer = PPOTrainer(
            args=args, processing_class=tokenizer, model=setup.policy,
            ref_model=None, reward_model=reward_model, value_model=value_model, train_dataset=dataset,
            callbacks=[report], peft_config=setup.peft_config,
        )
    # TRL would switch adapters through the trainer's model, which fails once DDP has
    # wrapped it (trl 1.9.2): a reference to call, over the same weights, works with
    # and without DDP.
    trainer.ref_model = AdapterReference(trainer.policy_model, reference_adapter)
    if setup.gradient_checkpointing:  # TRL's PPO loop, unlike the Trainer's, never switches it on
        trainer.policy_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    if isinstance(value_model, FeatureHeadCritic):
        value_model.features.rows_kept = args.local_batch_size  # one rollout batch, as TRL sized it
    # TRL reads the logits of the answer's positions only (and the one before them).
    with response_logits_only([trainer.policy_model, trainer.ref_model], config.response_length + 1):
        seconds = train_and_save(trainer, setup, out_dir, policy=trainer.policy_model)
    rollouts = trainer.state.episode
    return TrainingResult(history, seconds, rollouts, {"generated_tokens": rollouts * config.response_length})


@contextlib.contextmanager
def accelerate_mixed_precision(mixed_precision: str) -> Iterator[None]:
    """TRL's PPOTrainer builds its own `Accelerator()`, which takes its precision from
    ACCELERATE_MIXED_PRECISION (what `accelerate launch --mixed_precision` sets), not
    from `args.bf16` / `args.fp16`: inside, that variable says the job's precision."""
    before = os.environ.get(ENV_MIXED_PRECISION)
    os.environ[ENV_MIXED_PRECISION] = mixed_precision
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_MIXED_PRECISION, None)
        else:
            os.environ[ENV_MIXED_PRECISION] = before


ENV_MIXED_PRECISION = "ACCELERATE_MIXED_PRECISION"


def read_last_tokens(reward_model: torch.nn.Module, limit: int | None) -> None:
    """Make a reward model trained with left truncation read only the last `limit` tokens
    of what TRL's PPO loop hands it, as every other scorer cuts its inputs
    (training/ml/reward_features.py `keep_last_tokens`). TRL calls the backbone found
    under `base_model_prefix` with whole prompt + response sequences and reads the score
    at the answer's last token; the backbone is put behind `LastTokensWindow`, in place. A
    value model must be made from the reward model before this (its backbone is held
    apart, and reads whole rollouts). None (a version that reads whole inputs) leaves
    the model as it is."""
    if limit is None:
        return
    prefix = reward_model.base_model_prefix
    setattr(reward_model, prefix, LastTokensWindow(getattr(reward_model, prefix), limit))


class LastTokensWindow(torch.nn.Module):
    """A backbone that attends, in each row, only to the `limit` tokens that end where TRL
    reads the score (the last token before the first pad that follows the row's start):
    earlier ones are masked out of attention and positions restart at the window, which
    gives the window's tokens the states they would have if the input had been cut
    there (a left pad is masked the same way). Tokens outside the window get states
    nobody reads; that includes any after a pad the policy sampled mid-answer, which TRL
    cuts the answer at too."""

    def __init__(self, backbone: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.backbone, self.limit = backbone, limit

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None, **kwargs):
        real = attention_mask.long()
        started = real.cumsum(-1) > 0  # past the left padding
        after_gap = (started & (real == 0)).long().cumsum(-1) > 0  # from the first pad after the start on
        real = real * ~after_gap
        from_end = real.flip(-1).cumsum(-1).flip(-1)  # real tokens from here to the end, this one included
        window = real * (from_end <= self.limit)
        positions = window.cumsum(-1) - window  # as TRL numbers them: 0 at the first token attended to
        return self.backbone(input_ids=input_ids, attention_mask=window, position_ids=positions, **kwargs)


def critic(reward_model, config: PPOConfig) -> torch.nn.Module:
    """The value model, initialized from the reward model (Ouyang et al. 2022). TRL
    reaches a value model's backbone by its `base_model_prefix` attribute and scores with
    its `score` head, which is all a value model needs to offer; a LoRA adapter is
    injected in place (no PeftModel wrapper) for the same reason."""
    if config.value_model == "head":
        return FeatureHeadCritic(reward_model, rows_kept=config.batch_size)
    # A copy trains: in fp32 whatever the reward model's precision (under autocast the
    # trainer still computes in the job's).
    value = copy.deepcopy(reward_model).float().train()
    if config.value_model == "full":
        return value
    from peft import LoraConfig, inject_adapter_in_model

    value.requires_grad_(False)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                      exclude_modules=["score"])
    value = inject_adapter_in_model(lora, value)
    for name, parameter in value.named_parameters():
        parameter.requires_grad = "lora_" in name or name.startswith("score.")
    return value


class FeatureHeadCritic(torch.nn.Module):
    """A value model that is a linear head, initialized from the reward model's, on the
    reward model's frozen last-layer features. The backbone is the reward model's own
    (held, not registered, so the optimizer and Accelerate see only the head), and since
    it never changes, the features of a rollout are computed once, when TRL values the
    rollout, and served from memory in each PPO epoch after it."""

    base_model_prefix = "features"

    def __init__(self, reward_model, rows_kept: int) -> None:
        super().__init__()
        backbone = getattr(reward_model, reward_model.base_model_prefix)
        # The head trains: fp32, and so are the features it reads (the backbone's own
        # dtype is the job's precision).
        self.features = CachedFeatures(backbone, rows_kept, torch.float32)  # a plain object: not a submodule
        self.score = copy.deepcopy(reward_model.score).float().requires_grad_(True)


class CachedFeatures:
    """A frozen backbone's last hidden states, computed without gradients and kept for
    the last `rows_kept` sequences, keyed by their tokens and mask: TRL's PPO epochs
    value shuffled rows of the same rollout batch the rollout valued."""

    def __init__(self, backbone: torch.nn.Module, rows_kept: int, dtype: torch.dtype | None = None) -> None:
        self.backbone, self.rows_kept, self.dtype = backbone, rows_kept, dtype
        self.rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # key -> (seq, hidden)
        self.computed_rows = 0  # sequences run through the backbone (the rest came from memory)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None, **_ignored) -> SimpleNamespace:
        parts = [t.detach().cpu().numpy() for t in (input_ids, attention_mask, position_ids) if t is not None]
        keys = [b"|".join(part[row].tobytes() for part in parts) for row in range(len(input_ids))]
        if all(key in self.rows for key in keys):
            hidden = torch.stack([self.rows[key] for key in keys])  # (batch, seq, hidden)
        else:
            with torch.no_grad():
                output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       return_dict=True, output_hidden_states=True, use_cache=False)
            hidden = output.hidden_states[-1]  # (batch, seq, hidden)
            if self.dtype is not None:
                hidden = hidden.to(self.dtype)
            self.computed_rows += len(keys)
            for key, row in zip(keys, hidden, strict=True):
                self.rows[key] = row
                self.rows.move_to_end(key)
            while len(self.rows) > self.rows_kept:
                self.rows.popitem(last=False)
        return SimpleNamespace(hidden_states=(hidden,))


@contextlib.contextmanager
def response_logits_only(models: Iterable[torch.nn.Module | None], count: int) -> Iterator[None]:
    """While inside, a causal LM called without `logits_to_keep` (TRL's training and
    reference forwards) computes the vocabulary logits of only its last `count`
    positions and returns zeros before them: the prompt's positions, whose logits PPO
    never reads, cost an LM head each (49k × 576 for SmolLM2), forward and backward.
    Generation passes its own `logits_to_keep` and is left alone."""
    handles = []
    for model in models:
        if model is None:
            continue
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        if "logits_to_keep" not in inspect.signature(causal_lm.forward).parameters:
            continue  # a model that cannot skip them computes them all, as before
        trimmed: list[int] = []  # the length of the sequence whose logits were trimmed

        def trim(module, args, kwargs, trimmed=trimmed):
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            trimmed.clear()
            if kwargs.get("logits_to_keep") is None and input_ids is not None and input_ids.shape[1] > count:
                kwargs["logits_to_keep"] = count
                trimmed.append(input_ids.shape[1])
            return args, kwargs

        def pad(module, args, kwargs, output, trimmed=trimmed):
            if trimmed and output.logits.shape[1] == count:
                output.logits = torch.nn.functional.pad(output.logits, (0, 0, trimmed.pop() - count, 0))
            return output

        handles += [causal_lm.register_forward_pre_hook(trim, with_kwargs=True),
                    causal_lm.register_forward_hook(pad, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


METHOD = Method(
    name="ppo",
    title="PPO",
    summary="proximal policy optimization against the reward model, with a value model and a KL penalty",
    config_class=PPOConfig,
    needs=frozenset({REWARD_MODEL, PROMPTS}),
    curves=(Curve("ppo/reward", "Reward-model score (normalized)"),
            Curve("ppo/kl", "KL to the reference (nats per response)"),
            Curve("ppo/entropy", "Entropy (nats per response)")),
    trainer=train,
    # PPO was the first method, and the deployment's PREFLOOP_PPO_* variables still
    # set its defaults (README, "Configuration"); the other methods start from their dataclasses.
    deployment_defaults={
        "batch_size": "PREFLOOP_PPO_BATCH_SIZE",
        "response_length": "PREFLOOP_PPO_RESPONSE_LENGTH",
        "total_episodes": "PREFLOOP_PPO_EPISODES",
        "learning_rate": "PREFLOOP_PPO_LEARNING_RATE",
        "kl_coef": "PREFLOOP_PPO_KL_COEF",
        "reference": "PREFLOOP_PPO_REFERENCE",
    },
)


def main(argv: list[str] | None = None) -> None:
    run_cli(METHOD, argv)


if __name__ == "__main__":
    main()
