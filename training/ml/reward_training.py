"""Training a reward model version: a Bradley–Terry scorer of (prompt, completion)
trained on human preferences with TRL's RewardTrainer, LoRA on the base backbone by
default, then its score head fitted on the trained backbone's features, held-out
accuracy, normalization and the bootstrap ensemble measured from those features.

Plain functions and dataclasses, no Django: the web app turns labels into
`PreferencePair`s and calls `train_reward_model`; a test or a script can do the same.
What a version's folder holds and how it loads is training/ml/reward_loading.py;
scoring with one is training/ml/reward_scoring.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from training.ml.configs import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEED,
    MAX_SEQUENCE,
    SettingNames,
    bounded,
)
from training.ml.loading import FP32, pick_device
from training.ml.precision import Precision, precision_on
from training.ml.preference_pairs import PreferencePair, chosen_texts, rejected_texts, split_heldout
from training.ml.progress import StepReport, report_steps
from training.ml.reward_features import FEATURES_FILE, FeatureStore, keep_last_tokens, write_features
from training.ml.reward_heads import fit_bootstrap_heads, fit_head
from training.ml.reward_loading import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    HEAD_FILE,
    load_reward_backbone,
    load_reward_tokenizer,
)
from training.ml.tokens import ScoredText, reward_inputs

LINEAR_LAYER_NAMES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama, Qwen, Mistral, Gemma
    "out_proj", "fc1", "fc2", "dense", "query_key_value", "dense_h_to_4h", "dense_4h_to_h",  # OPT, Phi, NeoX
    "qkv_proj", "gate_up_proj", "c_attn", "c_proj", "c_fc", "query", "key", "value", "score",  # Phi-3, GPT-2
    "w1", "w2", "w3", "wq", "wk", "wv", "wo", "Wqkv", "out_lin", "lin1", "lin2",
})
"""The names PEFT's `target_modules` can mean in the causal LMs people train here: a
name PEFT finds in no layer fails the job only after the backbone has loaded, so a
run's `lora_targets` may name these (or say "all-linear")."""


def lora_targets_refusal(value: str) -> str | None:
    """Why `lora_targets` names no layer LoRA can train, or None."""
    if value.strip() == "all-linear":
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        return 'lora_targets: name the layers, separated by commas, or "all-linear"'
    # PEFT matches a name at the end of a module's path: "self_attn.q_proj" is q_proj's.
    unknown = [name for name in names if name.rsplit(".", 1)[-1] not in LINEAR_LAYER_NAMES]
    if unknown:
        return (f"lora_targets: no linear layer is called {', '.join(repr(name) for name in unknown)}; say "
                f'"all-linear" or name layers such as q_proj,k_proj,v_proj,o_proj')
    return None


@dataclass
class RewardTrainingConfig:
    """How one reward model version is trained; saved next to its weights."""

    use_lora: bool = True
    """LoRA adapter on the base backbone (False: full fine-tuning)."""
    lora_r: int = bounded(16, minimum=1, maximum=MAX_LORA_RANK)
    """LoRA rank."""
    lora_alpha: int = bounded(32, minimum=1, maximum=MAX_LORA_ALPHA)
    """LoRA scaling numerator."""
    lora_targets: str = bounded("all-linear", check=lora_targets_refusal)
    """Layers the LoRA adapter trains: "all-linear", or module names separated by commas
    (e.g. "q_proj,k_proj,v_proj,o_proj" for attention only on Llama-style models)."""
    learning_rate: float | None = bounded(None, above=0, maximum=MAX_LEARNING_RATE)
    """None picks 1e-4 with LoRA and 1e-5 for full fine-tuning (LoRA needs more to move in one epoch)."""
    epochs: float = bounded(1.0, above=0, maximum=MAX_EPOCHS)
    """Passes over the training pairs."""
    batch_size: int = bounded(8, minimum=1, maximum=MAX_BATCH)
    """Pairs per optimizer step; the pairs of one comparison share a batch."""
    max_length: int = bounded(512, minimum=16, maximum=MAX_SEQUENCE)
    """Tokens per prompt+completion the model reads; what happens to longer ones is `truncation`."""
    truncation: Literal["drop", "left"] = "drop"
    """Inputs longer than max_length: "drop" leaves their pairs out of training and of
    held-out accuracy (TRL's way; the version counts them), "left" keeps their last
    max_length tokens (a long dialog loses its oldest turns, never the answer) in
    training and in every scoring of this version, PPO's included."""
    heldout_fraction: float = bounded(0.1, minimum=0, below=1)
    """Share of comparisons held out for accuracy, chosen by a stable hash of the comparison id."""
    strength_margin: float = bounded(0.0, minimum=0, maximum=10)
    """Bradley–Terry margin per strength step (Llama 2 style); 0 ignores strength."""
    ensemble_size: int = bounded(5, minimum=0, maximum=64)
    """Bootstrap Bradley–Terry heads on the reward model's features, for query selection."""
    seed: int = bounded(0, minimum=0, maximum=MAX_SEED)
    """Seeds data order, LoRA init and the bootstrap."""
    fit_head_after_training: bool = True
    """After training, fit the score head to convergence (L-BFGS, under a second) on the
    trained backbone's features of the training pairs, starting from and pulled towards
    the head TRL trained, and publish that head: one short epoch leaves the trained head
    far from converged (docs/benchmarks.md, "Head fit after training": +7.9 points)."""
    refit_every_labels: int = bounded(1, minimum=0, maximum=1_000_000)
    """Between full retrains, publish a version with only the score head refit on cached
    features after this many new labels (seconds, not minutes); 0 = full retrains only."""

    # The deployment's defaults for a new run (names only; training/ml/configs.py
    # `values_from_settings`): the PREFLOOP_RM_* variables of the README's configuration.
    DEPLOYMENT_DEFAULTS: ClassVar[SettingNames] = {
        "use_lora": "not PREFLOOP_RM_FULL_FINETUNE",
        "learning_rate": "PREFLOOP_RM_LEARNING_RATE",
        "epochs": "PREFLOOP_RM_EPOCHS",
        "batch_size": "PREFLOOP_RM_BATCH_SIZE",
        "ensemble_size": "PREFLOOP_RM_ENSEMBLE_SIZE",
        "refit_every_labels": "PREFLOOP_RM_REFIT_EVERY_LABELS",
    }

    @property
    def keep_last(self) -> int | None:
        """Tokens an input keeps from its end (left truncation), or None to keep it whole."""
        return self.max_length if self.truncation == "left" else None

    @property
    def lora_target_modules(self) -> str | list[str]:
        """`lora_targets` as PEFT's LoraConfig takes it."""
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_targets.split(",") if name.strip()]

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.use_lora else 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RewardTrainingResult:
    train_pairs: int
    heldout_pairs: int
    dropped_too_long: int
    heldout_accuracy: float | None
    """On the held-out pairs from labels; on the imported ones when no label is held out."""
    reward_mean: float = 0.0
    reward_std: float = 1.0
    history: list[dict] = field(default_factory=list)
    heldout_accuracy_imported: float | None = None
    """On the held-out pairs from imported datasets (None without any)."""
    heldout_accuracy_trained_head: float | None = None
    """A full retrain's held-out accuracy with the head TRL trained, before the head fit
    (`fit_head_after_training`) replaced it; None where no head was fitted."""


def grouped_batches(groups: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of dataset indices where every group's pairs sit in one batch (InstructGPT
    trains all pairs of a ranking together, so each completion is seen once per step
    rather than overfitting across many). Groups are shuffled; a group larger than
    batch_size gets a batch of its own."""
    by_group: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    order = list(by_group.values())
    random.Random(seed).shuffle(order)
    batches, current = [], []
    for members in order:
        if current and len(current) + len(members) > batch_size:
            batches.append(current)
            current = []
        current = current + members
    if current:
        batches.append(current)
    return batches


class GroupedBatchSampler(torch.utils.data.Sampler):
    def __init__(self, groups: Sequence[int], batch_size: int, seed: int) -> None:
        self.groups, self.batch_size, self.seed, self.epoch = list(groups), batch_size, seed, 0

    def __iter__(self) -> Iterator[list[int]]:
        self.epoch += 1
        yield from grouped_batches(self.groups, self.batch_size, self.seed + self.epoch)

    def __len__(self) -> int:
        return len(grouped_batches(self.groups, self.batch_size, self.seed))


def pairs_to_dataset(pairs: Sequence[PreferencePair], tokenizer, strength_margin: float,
                     keep_last: int | None = None):
    """TRL's tokenized preference format (`chosen_ids`, `rejected_ids`), ending at the
    answer's EOS like PPO's inputs (see training/ml/tokens.py), plus the group for
    batching and, when strength is used, TRL's `margin` column. `keep_last` truncates
    each input from the left."""
    from datasets import Dataset

    rows = {
        "chosen_ids": keep_last_tokens(reward_inputs(tokenizer, chosen_texts(pairs)), keep_last),
        "rejected_ids": keep_last_tokens(reward_inputs(tokenizer, rejected_texts(pairs)), keep_last),
        "group": [p.group for p in pairs],
    }
    if strength_margin:
        rows["margin"] = [strength_margin * (p.strength or 1) for p in pairs]
    return Dataset.from_dict(rows)


def make_trainer(model, tokenizer, dataset, config: RewardTrainingConfig, output_dir: Path, peft_config, callbacks,
                 precision: Precision = FP32):
    from trl import RewardConfig, RewardTrainer

    class GroupedRewardTrainer(RewardTrainer):
        """RewardTrainer whose batches keep each comparison's pairs together."""

        def get_train_dataloader(self):
            groups = self.train_dataset["group"]  # survives TRL's tokenize and length filter
            dataset = self._remove_unused_columns(self.train_dataset, description="training")
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=GroupedBatchSampler(groups, self.args.per_device_train_batch_size, self.args.seed),
                collate_fn=self.data_collator,
            )
            return self.accelerator.prepare(loader)

    args = RewardConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.effective_learning_rate,
        max_length=config.max_length,
        seed=config.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        **precision.trainer_flags,
        disable_tqdm=False,
        remove_unused_columns=False,  # the sampler needs `group`; our dataloader drops it
    )
    return GroupedRewardTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=callbacks,
    )


def train_reward_model(
    pairs: Sequence[PreferencePair],
    base_model_dir: Path,
    out_dir: Path,
    config: RewardTrainingConfig,
    warm_start_dir: Path | None = None,
    on_step: StepReport | None = None,
    normalization_samples: Sequence[ScoredText] = (),
    precision: str | None = None,
) -> RewardTrainingResult:
    """Train on the non-held-out pairs, write the weights (LoRA adapter, or the whole
    model) and the config into `out_dir`, and measure held-out accuracy. `out_dir` is
    written only at the end; callers publish it by renaming. `precision`: the run's
    setting (training/ml/precision.py), resolved on this process's device."""
    from transformers import set_seed

    set_seed(config.seed)
    if not pairs:
        raise ValueError("no preference pairs to train on")
    train, heldout = split_heldout(pairs, config.heldout_fraction)
    if not train:
        raise ValueError("no training pairs: every labelled comparison fell in the held-out share")
    resolved = precision_on(precision, pick_device())
    tokenizer = load_reward_tokenizer(base_model_dir)
    model, peft_config = initial_model(base_model_dir, tokenizer, config, warm_start_dir, resolved)
    dataset = pairs_to_dataset(train, tokenizer, config.strength_margin, config.keep_last)

    history: list[dict] = []
    report = report_steps(history, on_step, lambda key: f"train/{key}")
    trainer = make_trainer(model, tokenizer, dataset, config, out_dir.with_name(out_dir.name + ".trainer"),
                           peft_config, [report], resolved)
    keep_trained_weights_fp32(trainer.model)
    dropped = len(train) - trainer.train_dataset.num_rows
    if trainer.accelerator.distributed_type.name in ("DEEPSPEED", "FSDP"):
        # After training the main process scores with the whole model by itself.
        raise ValueError("reward models train in one process or under DDP; sharded weights (DeepSpeed, FSDP) "
                         "are for policy updates: give the reward-model (train) workers no accelerate config")
    trainer.train()
    if not trainer.accelerator.is_main_process:
        # Under `accelerate launch` (training/ml/launch.py) the main process saves,
        # measures, normalizes and fits the ensemble; the others are done.
        return RewardTrainingResult(len(train), len(heldout), dropped, None, history=history)
    save_reward_model(trainer.model, tokenizer, out_dir, config)
    # Measure with the same merged model that scoring will load.
    model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
    model = model.to(resolved.dtype).eval()  # in the dtype scoring loads it in

    # Every answer's features, kept for the fast path (training/ml/reward_refit.py),
    # which refits the head on them without running the backbone again.
    # The trained head stays in the features file: the anchor of this version's head fit
    # and of every refit of it.
    store = FeatureStore(head=model.score.weight[0].detach().float().cpu(), bias=score_bias(model))
    normalization = list(normalization_samples)
    embedded, features, too_long = store.embed(model, tokenizer, [*chosen_texts(pairs), *rejected_texts(pairs),
                                                                   *normalization], config.max_length,
                                                 config.keep_last)
    write_features(out_dir / FEATURES_FILE, embedded, features, too_long, store.head, store.bias)
    head, trained_head_accuracy = store.head, None
    fitted = store.scorable(train)
    if config.fit_head_after_training and fitted:
        head = fit_head_on_pairs(store, fitted, config)
        torch.save(head.clone(), out_dir / HEAD_FILE)
        trained_head_accuracy = headline_accuracy(pair_accuracy(store, store.head, heldout))
    accuracy, mean, std = evaluate_head(store, head, train, heldout, normalization, config, out_dir)
    return RewardTrainingResult(len(train), len(heldout), dropped, headline_accuracy(accuracy),
                                mean, std, history, accuracy[True], trained_head_accuracy)


def fit_head_on_pairs(store: FeatureStore, pairs: Sequence[PreferencePair],
                      config: RewardTrainingConfig) -> torch.Tensor:
    """The Bradley–Terry head fitted on the pairs' features (every answer must have
    them: `store.scorable`), from and towards the store's trained head, with the
    strength margins the trainer uses."""
    margins = torch.tensor([config.strength_margin * (p.strength or 1) for p in pairs]) \
        if config.strength_margin else None
    return fit_head(store.features(chosen_texts(pairs)) - store.features(rejected_texts(pairs)), store.head,
                    margins=margins)


def score_bias(model) -> float:
    bias = getattr(model.score, "bias", None)
    return float(bias.item()) if bias is not None else 0.0


def evaluate_head(store: FeatureStore, head: torch.Tensor, train: Sequence[PreferencePair],
                  heldout: Sequence[PreferencePair], normalization: Sequence[ScoredText],
                  config: RewardTrainingConfig, out_dir: Path) -> tuple[dict, float, float]:
    """What a version reports, from features alone: held-out accuracy by origin, the
    normalization (mean, std of rewards on the initial policy's samples), and the
    bootstrap ensemble written to `out_dir`. Pairs with an answer longer than max_length
    (truncation "drop") are left out, as TRL leaves them out of training."""
    accuracy = pair_accuracy(store, head, heldout)
    mean, std = 0.0, 1.0
    normalization = [sample for sample in normalization if store.has(sample)]
    if normalization:
        rewards = store.rewards(normalization, head)
        mean, std = rewards.mean().item(), max(rewards.std(unbiased=False).item(), 1e-6)
    train = store.scorable(train)
    if config.ensemble_size > 0 and train:
        heads = fit_bootstrap_heads(store.features(chosen_texts(train)), store.features(rejected_texts(train)), head,
                                    config.ensemble_size, config.seed)
        torch.save(heads, out_dir / ENSEMBLE_FILE)
    return accuracy, mean, std


def pair_accuracy(store: FeatureStore, head: torch.Tensor, heldout: Sequence[PreferencePair]) -> dict:
    """{imported: share of pairs the head scores chosen > rejected} for pairs from labels
    (False) and from imported datasets (True), None where there are none; pairs without
    features (too long) are left out."""
    heldout = store.scorable(heldout)
    correct = (store.rewards(chosen_texts(heldout), head) > store.rewards(rejected_texts(heldout), head)).tolist()
    accuracy = {}
    for imported in (False, True):
        hits = [c for c, pair in zip(correct, heldout, strict=True) if pair.imported == imported]
        accuracy[imported] = sum(hits) / len(hits) if hits else None
    return accuracy


def headline_accuracy(accuracy: dict) -> float | None:
    """What a version reports as its held-out accuracy: on labels, or on imported pairs
    when no label is held out."""
    return accuracy[False] if accuracy[False] is not None else accuracy[True]


def initial_model(base_model_dir: Path, tokenizer, config: RewardTrainingConfig, warm_start_dir: Path | None,
                  precision: Precision = FP32):
    """(model, peft_config for TRL). Warm start continues from the previous version's
    weights: the same adapter made trainable, or the previous full model. Weights that
    train are fp32 (a full fine-tuning's all of them; the trainer computes in
    `precision` under autocast); under LoRA the frozen backbone loads in `precision`."""
    from transformers import AutoModelForSequenceClassification

    if not config.use_lora:
        source = warm_start_dir or base_model_dir
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, None
    from peft import LoraConfig, PeftModel, TaskType

    backbone = load_reward_backbone(base_model_dir, tokenizer, torch.device("cpu"), precision.dtype)
    if warm_start_dir is not None and (warm_start_dir / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(backbone, warm_start_dir, is_trainable=True), None
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
                      target_modules=config.lora_target_modules)
    return backbone, lora


def keep_trained_weights_fp32(model) -> None:
    """The weights that train, in fp32 (before the trainer builds its optimizer): PEFT
    keeps LoRA adapters so, not the score head it trains beside them
    (`modules_to_save`), which starts as a copy of the backbone's in its dtype."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def save_reward_model(model, tokenizer, out_dir: Path, config: RewardTrainingConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # a PeftModel saves its adapter and the score head
    tokenizer.save_pretrained(out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


