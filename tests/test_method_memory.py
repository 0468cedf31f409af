"""What every policy-update method holds in memory, on the tiny model on the CPU: with
the run's precision set to bf16 (and gradient checkpointing on) the base and the
reward model are bf16, the adapter fp32, and the metrics finite; whatever the
reference, the trainer's models hold one copy of the base weights (the reference is
the adapter switched off, or a frozen reference adapter beside the trained one, never
a second model); and with checkpointing on, sampling inside training keeps its KV
cache."""

from __future__ import annotations

import math

import pytest
import torch

from training.ml.loading import PolicyStart
from training.ml.methods import METHODS, TrainingInputs
from training.ml.preference_pairs import PreferencePair
from training.ml.reward_scoring import RewardModelRef

pytestmark = pytest.mark.slow

TOKENS = 8
ONE_UPDATE = {
    "ppo": {"batch_size": 4, "response_length": TOKENS, "total_episodes": 4, "ppo_epochs": 1},
    "rloo": {"batch_size": 4, "num_generations": 2, "max_completion_length": TOKENS},
    "grpo": {"batch_size": 4, "num_generations": 2, "max_completion_length": TOKENS},
    "online_dpo": {"prompts_per_step": 4, "max_new_tokens": TOKENS, "max_length": 64},
    "dpo": {"batch_size": 4, "max_length": 64},
    "sft_chosen": {"batch_size": 4, "max_length": 64},
    "best_of_n": {"n": 2, "max_new_tokens": TOKENS, "batch_size": 4, "max_length": 64},
}
PROMPTS = [[{"role": "user", "content": f"Say something about {topic}."}]
           for topic in ("tea", "rain", "maps", "chairs")]
PAIRS = [PreferencePair(group=i, prompt=PROMPTS[i], chosen=f"{i} is a fine answer", rejected="no") for i in range(4)]


@pytest.fixture
def trainers(monkeypatch):
    """The TRL trainers the methods build, as each starts training."""
    from training.ml.methods import base, dpo, ppo, sampling_trainers, supervised

    seen = []
    train_and_save = base.train_and_save

    def recorded(trainer, *args, **kwargs):
        seen.append(trainer)
        return train_and_save(trainer, *args, **kwargs)

    for module in (dpo, ppo, sampling_trainers, supervised):
        monkeypatch.setattr(module, "train_and_save", recorded)
    return seen


def policy_models(trainer) -> list[torch.nn.Module]:
    """The causal LMs a trainer holds: the policy and any separate reference."""
    policy = getattr(trainer, "policy_model", None) or trainer.model
    reference = getattr(trainer, "ref_model", None)
    return [model for model in (policy, reference) if model is not None]


def base_weight_count(models: list[torch.nn.Module]) -> int:
    """Elements of the non-adapter weights the models hold, each storage counted once."""
    storages = {}
    for model in models:
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "lora_" not in name and tensor.is_floating_point():
                storages[tensor.untyped_storage().data_ptr()] = tensor.numel()
    return sum(storages.values())


@pytest.fixture(scope="module")
def base_count(tiny_model_dir) -> int:
    from transformers import AutoModelForCausalLM

    return base_weight_count([AutoModelForCausalLM.from_pretrained(tiny_model_dir)])


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir, tmp_path_factory):
    """A version to continue from: one SFT update of the tiny base."""
    method = METHODS["sft_chosen"]
    out = tmp_path_factory.mktemp("v1") / "adapter"
    method.train(TrainingInputs(start=PolicyStart(tiny_model_dir), pairs=PAIRS), out,
                 method.config({**ONE_UPDATE["sft_chosen"], "learning_rate": 1e-2}))
    return out


@pytest.mark.parametrize("name", list(ONE_UPDATE))
def test_each_method_updates_in_bf16_with_the_adapter_in_fp32_and_one_base(name, tiny_model_dir, tiny_reward_model,
                                                                          tmp_path, trainers, base_count):
    method = METHODS[name]
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir), prompts=PROMPTS, pairs=PAIRS,
                            reward_model=RewardModelRef(tiny_model_dir, tiny_reward_model), precision="bf16",
                            gradient_checkpointing="on")
    result = method.train(inputs, tmp_path / "out", method.config(ONE_UPDATE[name]))

    assert (tmp_path / "out" / "adapter_config.json").is_file()
    curves = [curve.key for curve in method.curves]
    values = [entry[key] for entry in result.history for key in curves if key in entry]
    assert values and all(math.isfinite(value) for value in values), result.history
    assert len(trainers) == 1
    policy = policy_models(trainers[0])[0]
    trained = [p for p in policy.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert {p.dtype for n, p in policy.named_parameters() if "lora_" not in n and not p.requires_grad} == {
        torch.bfloat16}
    assert trainers[0].args.bf16 and not trainers[0].args.fp16
    assert trainers[0].args.gradient_checkpointing and policy.is_gradient_checkpointing
    assert base_weight_count(policy_models(trainers[0])) == base_count
    if name == "ppo":  # its own Accelerator, told explicitly
        assert trainers[0].accelerator.mixed_precision == "bf16"
        assert next(trainers[0].reward_model.parameters()).dtype == torch.bfloat16


WITH_REFERENCE = [name for name in ONE_UPDATE if "reference" in METHODS[name].config_class.__dataclass_fields__]


@pytest.mark.parametrize("reference", ["initial", "previous"])
@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_a_continued_version_holds_one_base_whatever_its_reference(name, reference, tiny_model_dir, tiny_reward_model,
                                                                    trained_adapter, tmp_path, trainers, base_count):
    """Continuing an adapter, TRL would give online DPO a deep copy of the whole model
    and PPO under DDP had a second base; "previous" used to be a merged copy."""
    method = METHODS[name]
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir, trained_adapter), prompts=PROMPTS, pairs=PAIRS,
                            reward_model=RewardModelRef(tiny_model_dir, tiny_reward_model))
    result = method.train(inputs, tmp_path / "out", method.config({**ONE_UPDATE[name], "reference": reference}))
    kl = [entry[f"{name}/kl"] for entry in result.history if f"{name}/kl" in entry]
    if kl:  # the first rollout is the start's own: no distance to itself, some to the base
        assert (abs(kl[0]) < 1e-3) == (reference == "previous"), kl
    models = policy_models(trainers[0])
    assert base_weight_count(models) == base_count
    policy = models[0]
    adapters = set(getattr(policy, "peft_config", {}))
    assert adapters == ({"default", "ref"} if reference == "previous" else {"default"}), adapters
    assert not (tmp_path / "out" / "ref").exists()  # the trained adapter alone was saved


def test_the_adapter_reference_is_the_base_or_the_start_over_the_policys_own_weights(tiny_model_dir,
                                                                                      trained_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.ml.loading import AdapterReference, add_reference_adapter

    def fresh(adapter=None):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        return PeftModel.from_pretrained(base, adapter).eval() if adapter else base.eval()

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), trained_adapter,
                                       is_trainable=True).eval()
    start = PolicyStart(tiny_model_dir, trained_adapter)
    assert add_reference_adapter(policy, start, "initial") is None
    assert add_reference_adapter(policy, start, "previous") == "ref"
    with torch.no_grad():  # the trained adapter moves on; the reference adapter does not
        for name, parameter in policy.named_parameters():
            if ".default." in name and "lora_B" in name:
                parameter.add_(0.5)
    trained = {name for name, parameter in policy.named_parameters() if parameter.requires_grad}
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(AdapterReference(policy, "ref")(input_ids=ids).logits,
                              fresh(trained_adapter)(input_ids=ids).logits, atol=1e-5)
        assert torch.allclose(AdapterReference(policy)(input_ids=ids).logits, fresh()(input_ids=ids).logits,
                              atol=1e-5)
        moved = policy(input_ids=ids).logits  # after the reference calls: the trained adapter again
        assert not torch.allclose(moved, fresh(trained_adapter)(input_ids=ids).logits, atol=1e-3)
    assert policy.active_adapter == "default"
    assert {name for name, parameter in policy.named_parameters() if parameter.requires_grad} == trained
    assert list(AdapterReference(policy, "ref").parameters()) == []  # nothing to move, wrap or count twice


SAMPLING = ["ppo", "rloo", "grpo", "online_dpo"]


@pytest.mark.parametrize("name", SAMPLING)
def test_with_checkpointing_on_sampling_inside_training_keeps_its_kv_cache(name, tiny_model_dir, tiny_reward_model,
                                                                           tmp_path, monkeypatch):
    """transformers' layers drop the cache whenever checkpointing is on in train mode
    (and online DPO asks for none): while the policy generates, every decoder layer
    must be called with the cache on and checkpointing off; while it trains, with
    checkpointing on."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls = {"generating": [], "training": []}
    generating = []
    generate = LlamaForCausalLM.generate

    def counted_generate(self, *args, **kwargs):
        generating.append(True)
        try:
            return generate(self, *args, **kwargs)
        finally:
            generating.pop()

    def record(layer, args, kwargs):
        drops_cache = layer.gradient_checkpointing and layer.training
        if generating:
            calls["generating"].append((kwargs.get("use_cache"), drops_cache))
        elif torch.is_grad_enabled():
            calls["training"].append(drops_cache)

    monkeypatch.setattr(LlamaForCausalLM, "generate", counted_generate)
    hooks = []
    real_init = GradientCheckpointingLayer.__init__

    def hooked_init(layer, *args, **kwargs):
        real_init(layer, *args, **kwargs)
        hooks.append(layer.register_forward_pre_hook(record, with_kwargs=True))

    monkeypatch.setattr(GradientCheckpointingLayer, "__init__", hooked_init)
    method = METHODS[name]
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir), prompts=PROMPTS,
                            reward_model=RewardModelRef(tiny_model_dir, tiny_reward_model), gradient_checkpointing="on")
    method.train(inputs, tmp_path / "out", method.config(ONE_UPDATE[name]))

    assert calls["generating"] and calls["training"]
    assert all(use_cache is not False and not drops for use_cache, drops in calls["generating"]), calls["generating"]
    assert any(calls["training"])  # the policy's own training forwards were checkpointed


@pytest.mark.parametrize("name", ["dpo", "grpo"])
def test_checkpointing_changes_no_number_on_the_cpu(name, tiny_model_dir, tiny_reward_model, tmp_path):
    """Recomputing activations gives the same gradients: one update with checkpointing
    on logs what it logs with checkpointing off (the sampling method included: its
    generation runs without checkpointing either way)."""
    method = METHODS[name]
    histories = {}
    for setting in ("off", "on"):
        inputs = TrainingInputs(start=PolicyStart(tiny_model_dir), prompts=PROMPTS, pairs=PAIRS,
                                reward_model=RewardModelRef(tiny_model_dir, tiny_reward_model),
                                gradient_checkpointing=setting)
        result = method.train(inputs, tmp_path / setting, method.config({**ONE_UPDATE[name], "epochs": 2}))
        histories[setting] = [{key: value for key, value in entry.items() if isinstance(value, float)
                               and not any(part in key for part in ("per_second", "runtime", "time"))}
                              for entry in result.history]
    assert len(histories["on"]) == len(histories["off"]) >= 2
    for on, off in zip(histories["on"], histories["off"], strict=True):
        assert on.keys() == off.keys()
        different = {key: (on[key], off[key]) for key in on if on[key] != pytest.approx(off[key], rel=1e-4, abs=1e-6)}
        assert not different, different
