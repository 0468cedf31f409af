"""What a reward model version is on disk and how it loads: the files of a version's
folder, the reward tokenizer and backbone (the base model with a scalar `score` head),
and a published version made ready to score. Training (training/ml/reward_training.py)
writes these folders and the head refit (training/ml/reward_refit.py) derives them;
scoring (training/ml/reward_scoring.py) reads them. No Django.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.ml.loading import pick_device, precision_for
from training.ml.precision import Precision
from training.ml.quantization import DEFAULT_QUANTIZATION, quantization_config, require_quantization
from training.ml.tokens import use_distinct_pad

CONFIG_FILE = "prefloop_reward_config.json"
"""The `RewardTrainingConfig` a version was trained with, as JSON."""
ENSEMBLE_FILE = "ensemble_heads.pt"
"""The bootstrap heads (members, hidden) that rank comparisons for query selection."""
HEAD_FILE = "score_head.pt"
"""The score head a version publishes when it is not the one TRL trained (a head fit
after training, or a refit), applied over the backbone's when loading."""


def load_reward_tokenizer(base_model_dir: Path | str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    tokenizer.padding_side = "right"  # the score head reads the last token that is not padding
    return use_distinct_pad(tokenizer)


def load_reward_backbone(base_model_dir: Path | str, tokenizer, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32):
    """The base model with a fresh scalar `score` head, its weights in `dtype`."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base_model_dir, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device or pick_device())


def load_reward_model(base_model_dir: Path | str, weights_dir: Path | str, device: torch.device | None = None,
                      precision: Precision | str | None = None, quantization: str | None = None):
    """(model, tokenizer) of a published version, ready to score in the job's precision
    (a setting is resolved on `device`): a LoRA adapter is merged into the backbone in
    fp32 on the CPU, then the model is cast (rounding the sum once, not the adapter's
    update against rounded weights); a fully fine-tuned model loads straight in the dtype. The
    reward model is frozen wherever it is used, so every weight takes the dtype,
    the head included (PPO's value head copies it and trains in fp32)."""
    from transformers import AutoModelForSequenceClassification

    device = device or pick_device()
    precision = precision_for(precision, device)
    weights_dir = Path(weights_dir)
    if (quantization or DEFAULT_QUANTIZATION) != "none":
        return load_quantized_reward_model(base_model_dir, weights_dir, device, precision, quantization)
    tokenizer = load_reward_tokenizer(base_model_dir)
    if (weights_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        backbone = load_reward_backbone(base_model_dir, tokenizer, torch.device("cpu"))
        model = PeftModel.from_pretrained(backbone, weights_dir).merge_and_unload()
    else:
        # In the dtype it scores in: loaded in fp32 and cast, a 1.5B model peaked at
        # twice its fp32 size in a CPU process (docs/benchmarks.md, memory plan).
        model = AutoModelForSequenceClassification.from_pretrained(weights_dir, num_labels=1, dtype=precision.dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
    if (weights_dir / HEAD_FILE).is_file():  # a head fitted after training, or a refit's
        with torch.no_grad():
            model.score.weight.copy_(torch.load(weights_dir / HEAD_FILE, weights_only=True).reshape(1, -1))
    return model.to(device=device, dtype=precision.dtype).eval(), tokenizer


def load_quantized_reward_model(base_model_dir: Path | str, weights_dir: Path, device: torch.device,
                                precision: Precision, quantization: str):
    """The same in 4-bit (training/ml/quantization.py): a LoRA adapter stays unmerged on
    the quantized backbone (merging into 4-bit weights would round the update away), the
    score head unquantized in the compute dtype."""
    from transformers import AutoModelForSequenceClassification

    kind = require_quantization(quantization, device)
    loading = {"num_labels": 1, "dtype": precision.dtype, "device_map": {"": device},
               "quantization_config": quantization_config(kind, precision.dtype)}
    tokenizer = load_reward_tokenizer(base_model_dir)
    if (weights_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        backbone = AutoModelForSequenceClassification.from_pretrained(base_model_dir, **loading)
        backbone.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(backbone, weights_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(weights_dir, **loading)
        model.config.pad_token_id = tokenizer.pad_token_id
    head = score_head(model)
    if (weights_dir / HEAD_FILE).is_file():
        with torch.no_grad():
            head.weight.copy_(torch.load(weights_dir / HEAD_FILE, weights_only=True).reshape(1, -1))
    head.to(dtype=precision.dtype)
    return model.eval(), tokenizer


def score_head(model) -> torch.nn.Module:
    """The score head that scores: on a PeftModel, the adapter's trained copy of it
    (PEFT wraps a module it saves in a ModulesToSaveWrapper)."""
    head = model.score
    copies = getattr(head, "modules_to_save", None)
    return copies[model.active_adapter] if copies is not None else head


def input_limit(weights_dir: Path | str) -> int | None:
    """How many tokens from its end a published version reads of an input, as it was
    trained (`RewardTrainingConfig.keep_last`); None: the whole input."""
    path = Path(weights_dir) / CONFIG_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved.get("max_length") if saved.get("truncation") == "left" else None
