"""The fast reward-model path: a new version in seconds by refitting only the score head.

A full retrain (training/ml/reward_training.py) trains the LoRA adapter and head on every pair and
costs minutes that grow with the dataset. Between full retrains, a new label reaches a
published version this way instead:

1. The last full version (the *backbone*) left the features its head reads (the
   last-token hidden state) of every answer it saw in `features.pt`; each refit since
   left those of the answers it embedded. Features are keyed by the answer's content,
   so an answer is embedded once per backbone.
2. Only the answers missing from that store (the new labels' two answers) go through
   the backbone.
3. The Bradley–Terry head is refit on the feature differences of every training pair,
   starting from and pulled towards the backbone's trained head, then the ensemble,
   held-out accuracy and normalization are recomputed from features: no pass over the
   dataset, so the cost stays nearly flat as labels grow.

The published folder is the backbone's files (hard links: no copy) plus `score_head.pt`,
which `load_reward_model` applies, so every consumer of reward models reads a refit
version unchanged. What the head cannot learn (new features) waits for the next full
retrain, which the web app runs every `reward_auto_train_labels` labels.

    python -m training.ml.reward_refit --base-model var/models/smollm2-135m-instruct \\
        --backbone var/artifacts/reward-models/v3 --pairs prefs.jsonl --out /tmp/refit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from training.ml.loading import ARTIFACT_FILE
from training.ml.precision import DEFAULT_PRECISION, PRECISIONS
from training.ml.preference_pairs import PreferencePair, chosen_texts, rejected_texts, split_heldout
from training.ml.progress import StepReport
from training.ml.reward_features import FEATURES_FILE, FeatureStore, write_features
from training.ml.reward_loading import CONFIG_FILE, ENSEMBLE_FILE, HEAD_FILE, load_reward_model
from training.ml.reward_training import (
    RewardTrainingConfig,
    RewardTrainingResult,
    evaluate_head,
    fit_head_on_pairs,
    headline_accuracy,
)
from training.ml.tokens import ScoredText

# Files of the backbone's folder that describe the backbone itself, not the model a
# refit publishes.
NOT_LINKED = {FEATURES_FILE, HEAD_FILE, ENSEMBLE_FILE, CONFIG_FILE, ARTIFACT_FILE}


@dataclass
class RefitResult(RewardTrainingResult):
    embedded: int = 0
    """Answers that went through the backbone (the rest came from the store)."""


def refit_reward_head(
    pairs: Sequence[PreferencePair],
    base_model_dir: Path,
    backbone_dir: Path,
    feature_files: Sequence[Path],
    out_dir: Path,
    config: RewardTrainingConfig,
    normalization_samples: Sequence[ScoredText] = (),
    on_step: StepReport | None = None,
    precision: str | None = None,
) -> RefitResult:
    """Publishable folder in `out_dir`: the backbone (a full version's folder) with a head
    refit on every training pair. `feature_files`: the backbone's features and those of
    the refits since; the answers this refit embedded go to `out_dir/features.pt`, by
    the backbone loaded in the run's `precision` (the head itself fits in fp32)."""
    if not pairs:
        raise ValueError("no preference pairs to refit on")
    train, heldout = split_heldout(pairs, config.heldout_fraction)
    if not train:
        raise ValueError("no training pairs: every labelled comparison fell in the held-out share")
    store = FeatureStore.read(feature_files)
    if store.head is None:
        raise ValueError(f"{backbone_dir} has no trained head in its features; refit needs a full version")
    normalization = list(normalization_samples)
    needed = [*chosen_texts(pairs), *rejected_texts(pairs), *normalization]
    missing = store.missing(needed)
    if on_step is not None:
        on_step(0, 2, {"refit/embedding": len(missing)})
    out_dir.mkdir(parents=True)
    embedded, features, too_long = [], torch.zeros(0, store.head.shape[-1]), []
    if missing:
        model, tokenizer = load_reward_model(base_model_dir, backbone_dir, precision=precision)
        embedded, features, too_long = store.embed(model, tokenizer, missing, config.max_length, config.keep_last)
    write_features(out_dir / FEATURES_FILE, embedded, features, too_long)
    if on_step is not None:
        on_step(1, 2, {"refit/embedded": len(embedded)})

    fitted = store.scorable(train)
    if not fitted:
        raise ValueError(f"every training pair has an answer longer than max_length ({config.max_length} tokens)")
    head = fit_head_on_pairs(store, fitted, config)
    link_folder(backbone_dir, out_dir)
    torch.save(head.clone(), out_dir / HEAD_FILE)
    accuracy, mean, std = evaluate_head(store, head, train, heldout, normalization, config, out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), "refit_of": str(backbone_dir)}, indent=2))
    history = [{"step": 1, "refit/embedded": len(embedded), "refit/train_pairs": len(fitted)}]
    if on_step is not None:
        on_step(2, 2, history[-1])
    return RefitResult(len(train), len(heldout), len(train) - len(fitted),
                       headline_accuracy(accuracy), mean, std, history, accuracy[True], embedded=len(embedded))


def link_folder(source: Path, target: Path) -> None:
    """The backbone's weights and tokenizer, hard-linked (published folders are never
    written again, so sharing the bytes is safe), copied where links cannot be made."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir() or relative.parts[0] in NOT_LINKED:
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def main() -> None:
    from training.ml.methods.cli import read_pairs

    parser = argparse.ArgumentParser(description="Refit a reward model's score head on cached backbone features.")
    parser.add_argument("--base-model", required=True, type=Path)
    parser.add_argument("--backbone", required=True, type=Path, help="a fully trained reward-model folder")
    parser.add_argument("--refits", nargs="*", type=Path, default=[], help="earlier refits' folders (features)")
    parser.add_argument("--pairs", required=True, type=Path, help="PrefLoop's preference export (JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help="of the backbone")
    args = parser.parse_args()
    config = RewardTrainingConfig(**{k: v for k, v in json.loads((args.backbone / CONFIG_FILE).read_text()).items()
                                     if k in RewardTrainingConfig.__dataclass_fields__})
    files = [folder / FEATURES_FILE for folder in (args.backbone, *args.refits)]
    result = refit_reward_head(read_pairs(args.pairs), args.base_model, args.backbone, files, args.out, config,
                               precision=args.precision)
    print(json.dumps({"train_pairs": result.train_pairs, "heldout_accuracy": result.heldout_accuracy,
                      "embedded": result.embedded}))


if __name__ == "__main__":
    main()
