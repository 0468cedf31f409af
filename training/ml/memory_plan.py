"""How much memory a training job will need at its peak, estimated before it starts.

A job's peak is what it holds at once: the frozen weights of every model it keeps (the
policy's base, a reference copy, the reward model, a value model), the trainable part
with its gradients and Adam states, and the activations of one forward/backward pass
(plus the vocabulary logits, which dominate at short sequences and large vocabularies,
and the KV cache of sampling). Every number comes from the model's config (the model
built on the meta device: no weights are read) and the job's own settings, never from
a measurement of the job itself; `scripts/bench_memory_plan.py` measures how close it is.

    python -m training.ml.memory_plan --shape qwen2.5-1.5b --method ppo --dtype bf16 --device-gib 24

No Django here: training/services asks for a plan before it queues a job.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.ml.quantization import BYTES_PER_4BIT_WEIGHT, FROZEN_QUANTIZATIONS

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ADAM_BYTES_PER_TRAINABLE = 4 + 4 + 4 + 4
"""fp32 weight, gradient and Adam's two moments per trainable (LoRA weights stay fp32)."""
RUNTIME_BYTES = {"cpu": int(0.47 * GIB), "cuda": int(1.0 * GIB)}
"""What a training process holds before any model. CPU: the interpreter with torch,
transformers, peft, datasets and every TRL trainer imported, 0.47 GiB peak RSS on this
project's machine (`python -m training.ml.memory_plan --runtime`). CUDA: the context
and the caching allocator's slack, an assumption until a GPU run measures it."""

# Shapes of models our users train, from their published configs (no download).
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only model."""

    parameters: int
    """Of the causal LM, tied weights counted once."""
    lm_head_parameters: int
    """0 where the LM head is the embedding matrix (tied)."""
    hidden_size: int
    intermediate_size: int
    layers: int
    kv_size: int
    """Key/value width per token: kv heads × head dim."""
    head_dim: int
    vocab_size: int
    lora_parameters_per_rank: int
    """Σ (in + out) over the linear layers LoRA's "all-linear" targets (not the LM head)."""

    @property
    def reward_model_parameters(self) -> int:
        """The same backbone with a one-output score head instead of the LM head."""
        return self.parameters - self.lm_head_parameters + self.hidden_size

    def lora_parameters(self, rank: int) -> int:
        return rank * self.lora_parameters_per_rank


def model_shape(config) -> ModelShape:
    """The shape of a transformers config's causal LM, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    lora_per_rank = sum(module.in_features + module.out_features for name, module in model.named_modules()
                        if isinstance(module, torch.nn.Linear) and module is not head)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(parameters=parameters, lm_head_parameters=0 if tied else head.weight.numel(),
                      hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                      layers=config.num_hidden_layers, kv_size=getattr(config, "num_key_value_heads", heads) * head_dim,
                      head_dim=head_dim,
                      vocab_size=config.vocab_size, lora_parameters_per_rank=lora_per_rank)


ANALYTIC_TYPES = ("llama", "mistral", "qwen2")
"""Decoder layers of q/k/v/o projections, a gated MLP and two RMSNorms (Qwen2 adds
biases to q, k and v): sizes follow from the config alone, by arithmetic."""


def analytic_shape(values: dict[str, Any]) -> ModelShape | None:
    """The shape of a config.json's model by arithmetic, for the architectures above
    (the run page plans with it, without building a model); None for others."""
    if values.get("model_type") not in ANALYTIC_TYPES:
        return None
    h, i, layers, vocab = (values["hidden_size"], values["intermediate_size"], values["num_hidden_layers"],
                           values["vocab_size"])
    heads = values["num_attention_heads"]
    head_dim = values.get("head_dim") or h // heads
    kv = values.get("num_key_value_heads", heads) * head_dim
    q = heads * head_dim
    biases = q + 2 * kv if values["model_type"] == "qwen2" else 0
    linears = (h * q) + 2 * (h * kv) + (q * h) + 3 * (h * i)
    per_layer = linears + biases + 2 * h
    tied = values.get("tie_word_embeddings", False)
    head = 0 if tied else vocab * h
    lora_per_rank = (h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i)
    return ModelShape(parameters=vocab * h + layers * per_layer + h + head, lm_head_parameters=head, hidden_size=h,
                      intermediate_size=i, layers=layers, kv_size=kv, head_dim=head_dim, vocab_size=vocab,
                      lora_parameters_per_rank=layers * lora_per_rank)


def known_shape(name: str) -> ModelShape:
    from transformers import AutoConfig

    if name not in KNOWN_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {', '.join(KNOWN_SHAPES)}")
    values = dict(KNOWN_SHAPES[name])
    return model_shape(AutoConfig.for_model(values.pop("model_type"), **values))


def shape_of_model_dir(model_dir) -> ModelShape:
    from transformers import AutoConfig

    return model_shape(AutoConfig.from_pretrained(model_dir))


@dataclass(frozen=True)
class Workload:
    """What one job of a method holds and runs at once, from the method's config."""

    policy_trains: str = "lora"
    """"lora" (a trainable adapter on frozen weights) or "full"."""
    lora_rank: int = 16
    full_copies: int = 0
    """Frozen copies of the policy besides it (a reference the adapter cannot stand for)."""
    reward_models: int = 0
    """Frozen reward models held (the judge)."""
    value_model: str = "none"
    """PPO's critic: "none", "head" (a head on the reward model's features), "lora" or "full" (its own copy)."""
    sequences: int = 1
    """Sequences in one forward/backward pass."""
    tokens: int = 128
    """Tokens per sequence (prompt + answer)."""
    logit_positions: int = 128
    """Positions per sequence whose vocabulary logits the loss reads."""
    sampled_sequences: int = 0
    """Sequences sampled at once (their KV cache); 0 for a method that samples nothing."""
    logit_tensors: float = 3
    """Vocabulary-wide fp32 tensors held per logit position (logits, log-softmax, gradient)."""
    engine_samples: bool = False
    """Its sampling goes through the run's sampling engine (training/ml/engines.py): with
    vLLM, the engine's reservation replaces the KV cache."""
    sampling_apart: bool = False
    """Sampling, then scoring, then training, each with the others' models freed: the
    peak is the largest phase, not their sum."""


@dataclass(frozen=True)
class JobData:
    """What a job's inputs look like, as far as its memory goes."""

    prompt_tokens: int = 128
    """The longest chat-templated prompt (batches pad to it)."""
    continuing: bool = False
    """The job continues an adapter (its reference may need a copy)."""
    answer_tokens: int | None = None
    """The longest answer of its preference pairs; None: not known (a page plans for 64)."""
    prompts: int | None = None
    """How many prompts it answers; None: not known."""


PLANNED_ANSWER_TOKENS = 64
"""Answer length a pair method is planned for when its pairs are not at hand."""

WORKLOADS: dict[str, Callable[[Any, JobData], Workload]] = {}
"""Per method: (its config, what its inputs look like) → its Workload."""


def workload_of(method: str):
    def register(build: Callable[[Any, JobData], Workload]):
        WORKLOADS[method] = build
        return build

    return register


@workload_of("ppo")
def ppo_workload(config, data: JobData) -> Workload:
    # The "previous" reference is merged into a frozen copy (training/ml/loading.py).
    copies = int(config.reference == "previous" and data.continuing)
    answer = config.response_length
    # TRL's PPO keeps the rollout's sampled logits, (batch, answer, vocab), through the
    # update; each minibatch then holds its logits, their log-softmax and gradient, and
    # the entropy's softmax and product (trl/experimental/ppo/ppo_trainer.py): five
    # vocabulary-wide tensors per position of the minibatch, one per position of the batch.
    minibatch = config.batch_size // config.num_mini_batches
    return Workload(lora_rank=config.lora_r, full_copies=copies, reward_models=1, value_model=config.value_model,
                    sequences=minibatch, tokens=data.prompt_tokens + answer, logit_positions=answer + 1,
                    logit_tensors=5 + config.batch_size / minibatch, sampled_sequences=config.batch_size)


def _group_sampling(config, data: JobData) -> Workload:
    # GRPO and RLOO: a continued adapter's reference is TRL's frozen "ref" adapter (no copy).
    answer = config.max_completion_length
    return Workload(lora_rank=config.lora_r, reward_models=1, sequences=config.batch_size,
                    tokens=data.prompt_tokens + answer, logit_positions=answer + 1,
                    sampled_sequences=config.batch_size, engine_samples=True)


workload_of("grpo")(_group_sampling)
workload_of("rloo")(_group_sampling)


@workload_of("online_dpo")
def online_dpo_workload(config, data: JobData) -> Workload:
    # A continued adapter gets a whole frozen model as its reference (TRL deep-copies
    # it for "previous"; the base is loaded for "initial"): see methods/online_dpo.py.
    answer = config.max_new_tokens
    pairs = config.prompts_per_step
    return Workload(lora_rank=config.lora_r, full_copies=int(data.continuing), reward_models=1,
                    sequences=2 * pairs, tokens=data.prompt_tokens + answer, logit_positions=answer + 1,
                    sampled_sequences=2 * pairs, engine_samples=True)


def _pair_tokens(config, data: JobData) -> int:
    answer = PLANNED_ANSWER_TOKENS if data.answer_tokens is None else data.answer_tokens
    return min(config.max_length, data.prompt_tokens + answer)


@workload_of("dpo")
def dpo_workload(config, data: JobData) -> Workload:
    tokens = _pair_tokens(config, data)
    return Workload(lora_rank=config.lora_r, sequences=2 * config.batch_size, tokens=tokens, logit_positions=tokens)


@workload_of("sft_chosen")
def sft_workload(config, data: JobData) -> Workload:
    tokens = _pair_tokens(config, data)
    return Workload(lora_rank=config.lora_r, sequences=config.batch_size, tokens=tokens, logit_positions=tokens)


@workload_of("best_of_n")
def best_of_n_workload(config, data: JobData) -> Workload:
    # Samples with the policy, frees it, scores with the reward model, frees that, then
    # fine-tunes on at most one kept answer per prompt (methods/best_of_n.py): three
    # phases, never at once.
    tokens = min(config.max_length, data.prompt_tokens + config.max_new_tokens)
    kept = config.batch_size if data.prompts is None else max(1, min(config.batch_size, data.prompts))
    return Workload(lora_rank=config.lora_r, reward_models=1, sequences=kept, tokens=tokens,
                    logit_positions=tokens, sampled_sequences=config.sampling_batch_size * config.n,
                    engine_samples=True, sampling_apart=True)


@dataclass
class MemoryPlan:
    """A job's estimated peak, part by part (bytes), and what would shrink each part."""

    parts: dict[str, int] = field(default_factory=dict)
    advice: dict[str, str] = field(default_factory=dict)
    apart: dict[str, int] = field(default_factory=dict)
    """Parts held in another phase of the job than its peak (not counted in the total)."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def gib(self) -> float:
        return self.total / GIB

    def refusal(self, available: int) -> str | None:
        """None when it fits in `available` bytes; else why not, and the setting to change."""
        if self.total <= available:
            return None
        largest = max(self.parts, key=self.parts.get)
        return (f"this job needs about {self.gib():.1f} GiB at its peak and the device has {available / GIB:.1f} "
                f"GiB; its largest part is {largest} ({self.parts[largest] / GIB:.1f} GiB): "
                f"{self.advice.get(largest, 'use a smaller model or a larger device')}")

    def lines(self) -> list[str]:
        return [f"{name:<28} {size / GIB:8.2f} GiB" for name, size in self.parts.items()] + \
               [f"{'total':<28} {self.gib():8.2f} GiB"] + \
               [f"{name:<28} {size / GIB:8.2f} GiB  (another phase, not at the peak)"
                for name, size in self.apart.items()]


# Bytes one token keeps for the backward pass in one decoder layer, per unit of hidden
# size, kv width and MLP width, by compute dtype and by what trains: counted exactly
# (autograd's saved-tensor hooks, `saved_bytes_per_token_per_layer` below) on Llama
# layers of five widths with SDPA attention, which keeps no seq x seq scores. In bf16
# the norms keep fp32 copies, and LoRA's fp32 weights keep fp32 copies of their inputs.
LAYER_BYTES: dict[tuple[str, str], tuple[int, int, int]] = {
    ("fp32", "full"): (56, 8, 16), ("fp32", "lora"): (48, 8, 16),
    ("bf16", "full"): (36, 4, 8), ("bf16", "lora"): (44, 4, 10),
}
LORA_TARGETS_PER_LAYER = 7  # q, k, v, o, gate, up, down: "all-linear"


def layer_bytes_per_token(shape: ModelShape, dtype: str, trains: str, lora_rank: int) -> int:
    """One layer's saved activations per token (no checkpointing)."""
    width = DTYPE_BYTES[dtype]
    per_h, per_kv, per_i = LAYER_BYTES["fp32" if width == 4 else "bf16", trains]
    rope = 2 * shape.head_dim * width + 16  # cos and sin, and the positions
    lora = LORA_TARGETS_PER_LAYER * lora_rank * 4 if trains == "lora" else 0  # each adapter's rank-wide middle
    return per_h * shape.hidden_size + per_kv * shape.kv_size + per_i * shape.intermediate_size + rope + lora


def activation_bytes_per_token(shape: ModelShape, dtype: str, trains: str, lora_rank: int,
                               gradient_checkpointing: bool) -> int:
    """Over every layer. With checkpointing a layer keeps only its input, and the
    backward recomputes one layer at a time, whose activations are then held once."""
    layer = layer_bytes_per_token(shape, dtype, trains, lora_rank)
    if gradient_checkpointing:
        return shape.layers * shape.hidden_size * DTYPE_BYTES[dtype] + layer
    return shape.layers * layer


def saved_bytes_per_token_per_layer(config, dtype, lora_rank: int | None, tokens: int = 32) -> float:
    """What autograd really keeps per token in one layer of `config` (a 2-layer model
    minus a 1-layer one, weights excluded): the count LAYER_BYTES was read from, and
    the test of it. Builds small models on the CPU; use a reduced width."""
    import torch
    from transformers import AutoModelForCausalLM

    kept = []
    for layers in (1, 2):
        # layer_types (Qwen2's per-layer attention kinds) is rebuilt for the new depth.
        sized = type(config).from_dict({**config.to_dict(), "num_hidden_layers": layers, "layer_types": None})
        model = AutoModelForCausalLM.from_config(sized).to(dtype)
        if lora_rank:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                     target_modules="all-linear"))
        weights = {p.data_ptr() for p in model.parameters()}
        total = [0]

        def pack(tensor, weights=weights, total=total):
            if tensor.data_ptr() not in weights:
                total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids=torch.zeros(2, tokens, dtype=torch.long), use_cache=False, logits_to_keep=1)
        kept.append(total[0] / (2 * tokens))
    return kept[1] - kept[0]


def vllm_reservation(sampling_engine: str, share: float, device_bytes: float) -> int:
    """What a vLLM sampling engine reserves of a device of `device_bytes`: its `share`
    (PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION); 0 when the run samples with transformers."""
    return int(share * device_bytes) if sampling_engine == "vllm" else 0


def frozen_bytes(parameters: int, unquantized: int, width: int, quantization: str) -> int:
    """Bytes of `parameters` frozen weights: in the compute dtype (`width` bytes), or with
    "nf4" in 4 bits but for the `unquantized` ones (embeddings and heads, which
    bitsandbytes leaves in the compute dtype)."""
    if quantization == "none":
        return parameters * width
    return int((parameters - unquantized) * BYTES_PER_4BIT_WEIGHT) + unquantized * width


def policy_frozen_bytes(shape: ModelShape, width: int, quantization: str) -> int:
    """The base under a trained adapter. In 4 bits, peft's prepare_model_for_kbit_training
    casts what stays unquantized (embeddings, LM head, norms) to fp32."""
    return frozen_bytes(shape.parameters, shape.vocab_size * shape.hidden_size + shape.lm_head_parameters,
                        width if quantization == "none" else 4, quantization)


def reward_model_frozen_bytes(shape: ModelShape, width: int, quantization: str) -> int:
    return frozen_bytes(shape.reward_model_parameters, shape.vocab_size * shape.hidden_size + shape.hidden_size,
                        width, quantization)


def plan_job(shape: ModelShape, workload: Workload, dtype: str = "bf16", gradient_checkpointing: bool = False,
             device: str = "cuda", quantization: str = "none", vllm_bytes: int = 0) -> MemoryPlan:
    """The peak of one training job of `workload` on `shape` in `dtype`. `quantization`:
    the run's frozen_quantization; `vllm_bytes`: what a vLLM sampling engine reserves
    (its share of the device), 0 where the job samples with transformers."""
    width = DTYPE_BYTES[dtype]
    plan = MemoryPlan()
    smaller_weights = ("choose bf16 precision" if width == 4 else
                       "set frozen_quantization to nf4, or use a smaller model or a larger device"
                       if quantization == "none" else "use a smaller model or a larger device")
    fewer_tokens = "lower the batch size or the answer length"
    plan.parts["runtime"] = RUNTIME_BYTES[device]
    plan.parts["policy weights"] = (shape.parameters * width if workload.policy_trains == "full"
                                    else policy_frozen_bytes(shape, width, quantization))
    plan.advice["policy weights"] = smaller_weights
    if workload.policy_trains == "full":
        plan.parts["policy gradients + Adam"] = shape.parameters * ADAM_BYTES_PER_TRAINABLE
        plan.advice["policy gradients + Adam"] = "train a LoRA adapter instead of every weight"
    else:
        plan.parts["LoRA + gradients + Adam"] = shape.lora_parameters(workload.lora_rank) * ADAM_BYTES_PER_TRAINABLE
        plan.advice["LoRA + gradients + Adam"] = "lower lora_r"
    if workload.full_copies:
        plan.parts["reference copies"] = workload.full_copies * policy_frozen_bytes(shape, width, quantization)
        plan.advice["reference copies"] = "use the 'initial' reference (the base, with the adapter off)"
    if workload.reward_models:
        plan.parts["reward model"] = workload.reward_models * reward_model_frozen_bytes(shape, width, quantization)
        plan.advice["reward model"] = smaller_weights
    if workload.value_model in ("full", "lora"):
        trainable = shape.reward_model_parameters if workload.value_model == "full" else \
            shape.lora_parameters(workload.lora_rank)
        plan.parts["value model"] = shape.reward_model_parameters * width + trainable * ADAM_BYTES_PER_TRAINABLE
        plan.advice["value model"] = "use value_model 'head' (a head on the reward model's own features)"
    tokens = workload.sequences * workload.tokens
    plan.parts["activations"] = tokens * activation_bytes_per_token(
        shape, dtype, workload.policy_trains, workload.lora_rank, gradient_checkpointing)
    plan.advice["activations"] = fewer_tokens if gradient_checkpointing else \
        "turn on gradient checkpointing, or " + fewer_tokens
    # Logits are upcast to fp32 for the log-probabilities; with their softmax and its
    # gradient that is three vocabulary-wide fp32 tensors per position read.
    plan.parts["logits"] = int(workload.sequences * workload.logit_positions * shape.vocab_size * 4
                               * workload.logit_tensors)
    plan.advice["logits"] = fewer_tokens
    if workload.sampled_sequences and workload.engine_samples and vllm_bytes:
        plan.parts["vLLM engine"] = vllm_bytes
        plan.advice["vLLM engine"] = "lower PREFLOOP_VLLM_GPU_MEMORY_UTILIZATION"
    elif workload.sampled_sequences:
        plan.parts["KV cache (sampling)"] = (workload.sampled_sequences * workload.tokens * shape.layers
                                             * 2 * shape.kv_size * width)
        plan.advice["KV cache (sampling)"] = fewer_tokens
    if workload.sampling_apart and quantization != "none":
        # It samples with the policy as trained, unquantized (engines.sample_answers):
        # what that holds beyond the 4-bit base.
        plan.parts["unquantized policy (sampling)"] = max(0, shape.parameters * width - plan.parts["policy weights"])
        plan.advice["unquantized policy (sampling)"] = smaller_weights
    if workload.sampling_apart:
        keep_largest_phase(plan)
    return plan


PHASES = {
    "sampling": ("runtime", "policy weights", "unquantized policy (sampling)", "KV cache (sampling)", "vLLM engine"),
    "scoring": ("runtime", "reward model"),
    "training": ("runtime", "policy weights", "LoRA + gradients + Adam", "policy gradients + Adam",
                 "activations", "logits"),
}


def keep_largest_phase(plan: MemoryPlan) -> None:
    """For a job that samples, scores and trains one after another: the plan's parts
    become the largest phase's, the rest are noted as held at other times."""
    def size(phase):
        return sum(plan.parts.get(name, 0) for name in PHASES[phase])

    largest = max(PHASES, key=size)
    for name in list(plan.parts):
        if name not in PHASES[largest]:
            plan.apart[name] = plan.parts.pop(name)


def plan_reward_training(shape: ModelShape, config, dtype: str = "bf16", gradient_checkpointing: bool = False,
                         device: str = "cuda") -> MemoryPlan:
    """A reward model's training (training/ml/reward_training.py): the backbone with its
    score head, a LoRA adapter or every weight training, each batch's chosen and
    rejected inputs of up to max_length tokens, one score per input (no vocabulary)."""
    reward_shape = ModelShape(**{**shape.__dict__, "parameters": shape.reward_model_parameters,
                                 "lm_head_parameters": 0})
    job = Workload(policy_trains="lora" if config.use_lora else "full", lora_rank=config.lora_r,
                   sequences=2 * config.batch_size, tokens=config.max_length, logit_positions=0)
    plan = plan_job(reward_shape, job, dtype, gradient_checkpointing, device)
    plan.parts["reward model weights"] = plan.parts.pop("policy weights")
    plan.advice["reward model weights"] = plan.advice.pop("policy weights")
    plan.advice["activations"] = "lower the reward model's batch_size or max_length"
    del plan.parts["logits"]
    return plan


def plan_for_method(shape: ModelShape, method: str, config, prompt_tokens: int, continuing: bool = False,
                    dtype: str = "bf16", gradient_checkpointing: bool = False, device: str = "cuda",
                    answer_tokens: int | None = None, prompts: int | None = None, quantization: str = "none",
                    vllm_bytes: int = 0) -> MemoryPlan:
    if method not in WORKLOADS:
        raise ValueError(f"no memory plan for method {method!r}; known: {', '.join(WORKLOADS)}")
    data = JobData(prompt_tokens, continuing, answer_tokens, prompts)
    return plan_job(shape, WORKLOADS[method](config, data), dtype, gradient_checkpointing, device, quantization,
                    vllm_bytes)


def main(argv: list[str] | None = None) -> None:
    from training.ml.methods import METHODS, method_named

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen2.5-1.5b", help=f"one of {', '.join(KNOWN_SHAPES)}")
    parser.add_argument("--model-dir", help="a local Hugging Face model directory (instead of --shape)")
    parser.add_argument("--method", default="ppo", choices=list(METHODS))
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPE_BYTES))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda", choices=list(RUNTIME_BYTES))
    parser.add_argument("--device-gib", type=float, help="refuse, with the reason, if the plan exceeds this")
    parser.add_argument("--quantization", default="none", choices=FROZEN_QUANTIZATIONS,
                        help="the run's frozen_quantization (nf4: 4-bit frozen weights)")
    parser.add_argument("--vllm-share", type=float, default=0.0,
                        help="with --device-gib: the share of it a vLLM sampling engine reserves (0: transformers)")
    parser.add_argument("--runtime", action="store_true", help="print this process's peak RSS with the trainers "
                                                               "imported (the CPU runtime term) and stop")
    args = parser.parse_args(argv)
    if args.runtime:
        import resource

        import trl.experimental.online_dpo  # noqa: F401
        import trl.experimental.ppo  # noqa: F401
        from trl import DPOTrainer, GRPOTrainer, RLOOTrainer, SFTTrainer  # noqa: F401

        print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        return
    shape = shape_of_model_dir(args.model_dir) if args.model_dir else known_shape(args.shape)
    vllm_bytes = int(args.vllm_share * (args.device_gib or 0) * GIB)
    plan = plan_for_method(shape, args.method, method_named(args.method).config(), args.prompt_tokens,
                           dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing, device=args.device,
                           quantization=args.quantization, vllm_bytes=vllm_bytes)
    print("\n".join(plan.lines()))
    if args.device_gib and (why := plan.refusal(int(args.device_gib * GIB))):
        raise SystemExit(why)


if __name__ == "__main__":
    main()
