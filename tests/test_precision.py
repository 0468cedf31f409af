"""The run's precision setting: how it resolves on a device, and what it means for the
models a job loads (training/ml/precision.py): frozen weights in its dtype, adapters in
fp32, a merged export in the dtype asked for, and a reward model that ranks answers as
it does in fp32."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import save_tiny_reward_model
from training.ml.loading import PolicyStart, load_policy, trainable_policy
from training.ml.precision import (
    PRECISIONS,
    Precision,
    PrecisionError,
    enable_tf32,
    precision_on,
    resolve_precision,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def capability(major: int, minor: int = 0):
    return lambda device: (major, minor)


def test_auto_is_fp32_on_the_cpu_and_follows_the_cuda_capability():
    assert resolve_precision("auto", CPU).name == "fp32"
    assert resolve_precision(None, CPU).name == "fp32"  # a job pinned before precision existed
    assert resolve_precision("auto", CUDA, capability(8, 0)).name == "bf16"  # A100
    assert resolve_precision("auto", CUDA, capability(9, 0)).name == "bf16"  # H100
    assert resolve_precision("auto", CUDA, capability(7, 5)).name == "fp16"  # T4
    assert resolve_precision("auto", CUDA, capability(6, 1)).name == "fp16"  # P40
    # An explicit choice is taken as it is, whatever the capability.
    assert resolve_precision("fp32", CUDA, capability(9, 0)).name == "fp32"
    assert resolve_precision("bf16", CPU).name == "bf16"
    assert resolve_precision("fp16", CUDA, capability(7, 0)).name == "fp16"


def test_fp16_on_the_cpu_and_unknown_names_are_refused_with_the_choices():
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device.*auto, bf16 or fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(PrecisionError, match="auto, bf16, fp16, fp32"):
        resolve_precision("half", CPU)


def test_a_resolved_precision_gives_the_dtype_and_the_trainer_flags():
    assert (Precision("bf16").dtype, Precision("bf16").trainer_flags, Precision("bf16").mixed_precision) == (
        torch.bfloat16, {"bf16": True, "fp16": False}, "bf16")
    assert (Precision("fp16").dtype, Precision("fp16").trainer_flags, Precision("fp16").mixed_precision) == (
        torch.float16, {"bf16": False, "fp16": True}, "fp16")
    assert (Precision("fp32").dtype, Precision("fp32").trainer_flags, Precision("fp32").mixed_precision) == (
        torch.float32, {"bf16": False, "fp16": False}, "no")


def test_tf32_is_switched_on_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    enable_tf32(CPU)
    precision_on("auto", CPU)
    assert calls == []
    enable_tf32(CUDA)
    assert calls == ["high"]


def test_the_run_setting_offers_exactly_the_precisions_the_jobs_resolve(settings):
    from training.models import Run
    from training.services import default_settings

    assert tuple(Run.Precision.values) == PRECISIONS
    assert Run._meta.get_field("precision").default == "auto"  # what a migrated run gets
    settings.PREFLOOP_PRECISION = "bf16"
    assert default_settings("dpo")["precision"] == "bf16"


def test_on_a_bf16_base_the_lora_adapter_trains_in_fp32(tiny_model_dir, tmp_path):
    """PEFT's autocast_adapter_dtype, for a new adapter (get_peft_model, as TRL calls
    it) and for a continued one (PeftModel.from_pretrained, is_trainable)."""
    from peft import get_peft_model

    bf16 = Precision("bf16")
    base, lora = trainable_policy(PolicyStart(tiny_model_dir), 4, 8, CPU, bf16)
    model = get_peft_model(base, lora)
    dtypes = {("lora_" in name, parameter.dtype) for name, parameter in model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path / "adapter")

    continued, none = trainable_policy(PolicyStart(tiny_model_dir, tmp_path / "adapter"), 4, 8, CPU, bf16)
    assert none is None
    trained = [p for p in continued.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert {p.dtype for p in continued.parameters() if not p.requires_grad} == {torch.bfloat16}


@pytest.fixture(scope="module")
def moved_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter whose update is large enough to change greedy answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("moved-adapter")
    model.save_pretrained(out)
    return out


def test_sampling_in_bf16_keeps_the_adapter_unmerged_in_fp32_and_fp32_merges_it(tiny_model_dir, moved_adapter):
    from peft import PeftModel

    policy, _ = load_policy(tiny_model_dir, moved_adapter, CPU, "bf16")
    assert isinstance(policy, PeftModel)
    assert {p.dtype for n, p in policy.named_parameters() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in policy.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    merged, _ = load_policy(tiny_model_dir, moved_adapter, CPU, "auto")  # fp32 on the CPU
    assert not isinstance(merged, PeftModel) and {p.dtype for p in merged.parameters()} == {torch.float32}

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        unmerged_logits = policy(input_ids=ids).logits.float()
        merged_logits = merged(input_ids=ids).logits
        base_logits = load_policy(tiny_model_dir, None, CPU, "fp32")[0](input_ids=ids).logits
    # The adapter's effect survives bf16: much closer to the fp32 policy than to the base.
    assert (unmerged_logits - merged_logits).abs().max() < 0.25 * (merged_logits - base_logits).abs().max()


@pytest.fixture(scope="module")
def tiny_reward_dir(tmp_path_factory, tiny_model_dir):
    """A tiny reward model with a strong random score head: a spread of scores well above
    bf16's rounding."""
    return save_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("tiny-rm"), head_scale=100.0)


def test_the_scorer_ranks_answers_in_bf16_as_in_fp32(tiny_model_dir, tiny_reward_dir):
    from training.ml.reward_scoring import RewardScorer

    prompt = [{"role": "user", "content": "Name something good."}]
    answers = ["bread", "a long walk by the sea", "sleep", "the number seven", "tea with friends", "music",
               "a well made chair", "rain on the roof", "kindness", "an open window", "cold water", "maps"]
    samples = [(prompt, answer, True, None) for answer in answers]
    fp32 = RewardScorer.load(tiny_model_dir, tiny_reward_dir, 0.0, 1.0, CPU, "fp32")
    bf16 = RewardScorer.load(tiny_model_dir, tiny_reward_dir, 0.0, 1.0, CPU, "bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    exact, rounded = fp32.score(samples), bf16.score(samples)
    assert exact.std() > 0.5  # answers that the model tells apart
    assert torch.equal(exact.argsort(), rounded.argsort()), (exact.tolist(), rounded.tolist())
    assert (exact - rounded).abs().max() < 0.2 * exact.std()


def test_a_merged_export_is_written_in_the_dtype_asked_for(tiny_model_dir, moved_adapter, tmp_path):
    from safetensors import safe_open

    from training.ml.export import export_policy

    export_policy(tiny_model_dir, moved_adapter, tmp_path / "bf16", "merged", dtype="bf16")
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "prefloop_export.json").read_text())["dtype"] == "bf16"
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        export_policy(tiny_model_dir, moved_adapter, tmp_path / "bad", "merged", dtype="int8")


@pytest.mark.slow
def test_a_reward_model_trains_in_bf16_with_its_trained_weights_in_fp32(tiny_model_dir, tmp_path, monkeypatch):
    """LoRA on a bf16 backbone: adapter and score head train in fp32, the loss is
    finite, and the version scores (bf16 as well) what it learned."""
    from transformers import TrainerCallback

    from tests.test_reward_model_ml import marker_pairs
    from training.ml import reward_training
    from training.ml.reward_scoring import RewardScorer
    from training.ml.reward_training import RewardTrainingConfig, train_reward_model

    seen = {}

    class AtTheStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["bf16"] = args.bf16
            seen["trained"] = {p.dtype for p in model.parameters() if p.requires_grad}
            seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}

    make_trainer = reward_training.make_trainer

    def probed(model, tokenizer, dataset, config, output_dir, peft_config, callbacks, precision):
        return make_trainer(model, tokenizer, dataset, config, output_dir, peft_config, [*callbacks, AtTheStart()],
                            precision)

    monkeypatch.setattr(reward_training, "make_trainer", probed)
    pairs = marker_pairs(64)
    config = RewardTrainingConfig(learning_rate=3e-3, epochs=1, heldout_fraction=0.25, ensemble_size=0)
    result = train_reward_model(pairs, tiny_model_dir, tmp_path / "v1", config, precision="bf16")
    assert seen == {"bf16": True, "trained": {torch.float32}, "frozen": {torch.bfloat16}}
    assert all(math.isfinite(h["train/loss"]) for h in result.history if "train/loss" in h)
    assert result.heldout_accuracy is not None and result.heldout_accuracy >= 0.7

    scorer = RewardScorer.load(tiny_model_dir, tmp_path / "v1", result.reward_mean, result.reward_std, CPU, "bf16")
    chosen = scorer.score([(p.prompt, p.chosen) for p in pairs[:16]])
    rejected = scorer.score([(p.prompt, p.rejected) for p in pairs[:16]])
    assert (chosen > rejected).float().mean() >= 0.7
