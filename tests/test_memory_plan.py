"""The memory plan (training/ml/memory_plan.py): sizes from configs on the meta device,
activations as autograd really keeps them, and a refusal that names what to change."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from training.ml import memory_plan
from training.ml.memory_plan import GIB, WORKLOADS, Workload, known_shape, model_shape, plan_job
from training.ml.methods import METHODS, method_named


def test_sizes_of_real_models_come_from_their_configs_alone():
    # Published sizes (no weights read): Llama-3.1-8B 8.03B, as a reward model 7.50B, a
    # rank-16 all-linear LoRA adapter 41.9M; Qwen2.5-1.5B 1.54B with tied embeddings.
    llama = known_shape("llama-3.1-8b")
    assert round(llama.parameters / 1e9, 2) == 8.03 and round(llama.reward_model_parameters / 1e9, 2) == 7.50
    assert round(llama.lora_parameters(16) / 1e6, 1) == 41.9
    qwen = known_shape("qwen2.5-1.5b")
    assert round(qwen.parameters / 1e9, 2) == 1.54 and qwen.lm_head_parameters == 0


SMALL = {  # widths the table was not read from, and a head_dim of 32
    "llama": dict(hidden_size=192, intermediate_size=640, num_attention_heads=6, num_key_value_heads=2),
    "qwen2": dict(hidden_size=128, intermediate_size=448, num_attention_heads=4, num_key_value_heads=4),
}


@pytest.mark.parametrize("model_type", SMALL)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("lora_rank", [None, 8])
def test_activations_per_token_are_what_autograd_keeps(model_type, dtype, lora_rank):
    config = AutoConfig.for_model(model_type, vocab_size=128, num_hidden_layers=1, **SMALL[model_type])
    shape = model_shape(config)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    counted = memory_plan.saved_bytes_per_token_per_layer(config, torch_dtype, lora_rank)
    planned = memory_plan.layer_bytes_per_token(shape, dtype, "lora" if lora_rank else "full", lora_rank or 0)
    assert planned == pytest.approx(counted, rel=0.02)


def test_checkpointing_keeps_one_layer_and_each_layers_input():
    shape = known_shape("qwen2.5-1.5b")
    whole = memory_plan.activation_bytes_per_token(shape, "bf16", "lora", 16, gradient_checkpointing=False)
    kept = memory_plan.activation_bytes_per_token(shape, "bf16", "lora", 16, gradient_checkpointing=True)
    layer = memory_plan.layer_bytes_per_token(shape, "bf16", "lora", 16)
    assert whole == shape.layers * layer and kept == layer + shape.layers * shape.hidden_size * 2
    assert kept < whole / 10


def test_every_method_has_a_workload_and_copies_cost_what_a_model_weighs():
    assert set(WORKLOADS) == set(METHODS)
    shape = known_shape("qwen2.5-1.5b")
    ppo = method_named("ppo")
    fresh = memory_plan.plan_for_method(shape, "ppo", ppo.config({"reference": "previous"}), 128)
    continued = memory_plan.plan_for_method(shape, "ppo", ppo.config({"reference": "previous"}), 128, continuing=True)
    # Continuing an adapter against the previous version holds one more whole policy.
    assert continued.total - fresh.total == shape.parameters * 2
    head = memory_plan.plan_for_method(shape, "ppo", ppo.config({"value_model": "head"}), 128)
    full = memory_plan.plan_for_method(shape, "ppo", ppo.config({"value_model": "full"}), 128)
    assert full.total - head.total == shape.reward_model_parameters * (2 + 16)


def test_an_impossible_job_is_refused_with_the_setting_to_change():
    shape = known_shape("llama-3.1-8b")
    job = Workload(reward_models=1, sequences=8, tokens=192, logit_positions=65, sampled_sequences=8)
    fp32 = plan_job(shape, job, dtype="fp32")
    why = fp32.refusal(24 * GIB)
    assert why.startswith(f"this job needs about {fp32.gib():.1f} GiB at its peak and the device has 24.0 GiB")
    assert "policy weights" in why or "activations" in why
    assert "bf16" in why or "gradient checkpointing" in why
    # The same job in bf16 with checkpointing fits an 80 GB card, as the field runs it.
    lean = plan_job(shape, job, dtype="bf16", gradient_checkpointing=True)
    assert lean.refusal(80 * GIB) is None and lean.total < fp32.total / 2


@pytest.mark.parametrize("name", list(memory_plan.KNOWN_SHAPES))
def test_the_arithmetic_shape_the_web_pages_use_is_the_meta_devices(name):
    assert memory_plan.analytic_shape(memory_plan.KNOWN_SHAPES[name]) == known_shape(name)
    assert memory_plan.analytic_shape({"model_type": "gpt2"}) is None


def test_best_of_n_is_planned_at_its_largest_phase_not_the_sum_of_its_phases():
    # It samples, frees the policy, scores, frees the reward model, then fine-tunes.
    shape = memory_plan.known_shape("qwen2.5-1.5b")
    config = method_named("best_of_n").config()
    plan = memory_plan.plan_for_method(shape, "best_of_n", config, 128, prompts=4)
    every_part = plan.total + sum(plan.apart.values())
    assert "reward model" in plan.apart and "reward model" not in plan.parts
    assert plan.total < every_part
    assert set(plan.parts) <= set(memory_plan.PHASES["training"]) or set(plan.parts) <= set(
        memory_plan.PHASES["sampling"])
    assert any("another phase" in line for line in plan.lines())
    # It fine-tunes on at most one kept answer per prompt: 4 prompts, not its batch of 8.
    eight = memory_plan.plan_for_method(shape, "best_of_n", config, 128, prompts=8)
    assert plan.parts["activations"] * 2 == eight.parts["activations"]


def test_pair_methods_are_planned_for_their_pairs_answer_length_when_known():
    shape = memory_plan.known_shape("qwen2.5-1.5b")
    config = method_named("dpo").config()
    unknown = memory_plan.plan_for_method(shape, "dpo", config, 100)
    short = memory_plan.plan_for_method(shape, "dpo", config, 100, answer_tokens=20)
    assert short.parts["logits"] * (100 + memory_plan.PLANNED_ANSWER_TOKENS) == unknown.parts["logits"] * 120


def test_ppo_plans_the_rollout_logits_it_keeps_through_the_update():
    shape = memory_plan.known_shape("qwen2.5-1.5b")
    one = memory_plan.plan_for_method(shape, "ppo", method_named("ppo").config({"num_mini_batches": 1}), 64)
    four = memory_plan.plan_for_method(shape, "ppo", method_named("ppo").config({"num_mini_batches": 4}), 64)
    # A minibatch of a quarter holds a quarter of the five per-position tensors, but the
    # whole batch's sampled logits stay: (5/4 + 1) / (5 + 1) of the logits.
    assert four.parts["logits"] / one.parts["logits"] == pytest.approx((5 / 4 + 1) / 6, rel=1e-6)
