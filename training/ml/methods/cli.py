"""The command line every method module ends with: the same inputs the web app gives a
job, from files, so a method can be run, profiled or reproduced without Django.

    python -m training.ml.methods.dpo --base-model var/models/smollm2-135m-instruct \\
        --pairs prefs.jsonl --out /tmp/dpo-adapter --beta 0.1

Prompts: JSONL with `{"prompt": "..."}`, `{"prompt": [messages]}` or `{"messages": [...]}`
per line. Pairs: PrefLoop's preference export (TRL's conversational `prompt`/`chosen`/
`rejected`). Reward model: a published reward-model folder; its normalization is read
from the folder's manifest unless given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.ml.configs import add_config_arguments, config_from_arguments, config_to_dict
from training.ml.engines import DEFAULT_ENGINE, ENGINES
from training.ml.loading import PolicyStart, configure_torch_threads, read_artifact_manifest
from training.ml.methods.base import GRADIENT_CHECKPOINTING, PAIRS, PROMPTS, REWARD_MODEL, Method, TrainingInputs
from training.ml.precision import DEFAULT_PRECISION, PRECISIONS
from training.ml.preference_pairs import PreferencePair
from training.ml.quantization import DEFAULT_QUANTIZATION, FROZEN_QUANTIZATIONS
from training.ml.reward_scoring import RewardModelRef


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def as_messages(value) -> list[dict]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


def read_prompts(path: Path) -> list[list[dict]]:
    return [as_messages(row["prompt"] if "prompt" in row else row["messages"]) for row in read_jsonl(path)]


def answer_text(value) -> str:
    """A TRL answer: a string, or a one-message assistant turn."""
    return value if isinstance(value, str) else value[-1]["content"]


def read_pairs(path: Path) -> list[PreferencePair]:
    return [PreferencePair(group=index, prompt=as_messages(row["prompt"]), chosen=answer_text(row["chosen"]),
                           rejected=answer_text(row["rejected"]))
            for index, row in enumerate(read_jsonl(path))]


def reward_model_from(arguments) -> RewardModelRef:
    manifest = read_artifact_manifest(arguments.reward_model)
    mean = arguments.reward_mean if arguments.reward_mean is not None else manifest.get("reward_mean", 0.0)
    std = arguments.reward_std if arguments.reward_std is not None else manifest.get("reward_std", 1.0)
    base = manifest.get("base_model_dir") or arguments.base_model
    return RewardModelRef(Path(base), arguments.reward_model, float(mean), float(std), arguments.frozen_quantization)


def parser_for(method: Method) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m training.ml.methods.{method.name}",
                                     description=f"{method.title}: {method.summary}")
    parser.add_argument("--base-model", type=Path, required=True, help="Hugging Face model directory of the base")
    parser.add_argument("--adapter", type=Path, help="LoRA adapter of the version to continue (default: the base)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the new adapter")
    if PROMPTS in method.needs:
        parser.add_argument("--prompts", type=Path, required=True, help="JSONL prompts to sample from")
    if PAIRS in method.needs:
        parser.add_argument("--pairs", type=Path, required=True, help="JSONL preference pairs (prompt/chosen/rejected)")
    if REWARD_MODEL in method.needs:
        parser.add_argument("--reward-model", type=Path, required=True, help="published reward-model folder")
        parser.add_argument("--reward-mean", type=float, help="raw reward mean (default: from the folder)")
        parser.add_argument("--reward-std", type=float, help="raw reward std (default: from the folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch decides)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="of every model loaded (auto: bf16 on a recent GPU, fp16 on an older one, fp32 on CPU)")
    parser.add_argument("--gradient-checkpointing", choices=GRADIENT_CHECKPOINTING, default="auto",
                        help="recompute activations in the backward pass (auto: on on CUDA, off on the CPU)")
    parser.add_argument("--sampling-engine", choices=list(ENGINES), default=DEFAULT_ENGINE,
                        help="what samples answers (vllm: CUDA with vllm installed)")
    parser.add_argument("--frozen-quantization", choices=FROZEN_QUANTIZATIONS, default=DEFAULT_QUANTIZATION,
                        help="nf4: 4-bit reward model and base under the adapter (CUDA with bitsandbytes)")
    add_config_arguments(parser, method.config_class)
    return parser


def run_cli(method: Method, argv: list[str] | None = None) -> None:
    arguments = parser_for(method).parse_args(argv)
    configure_torch_threads(arguments.threads)
    config = config_from_arguments(method.config_class, arguments)
    inputs = TrainingInputs(start=PolicyStart(arguments.base_model, arguments.adapter), precision=arguments.precision,
                            gradient_checkpointing=arguments.gradient_checkpointing,
                            sampling_engine=arguments.sampling_engine,
                            frozen_quantization=arguments.frozen_quantization)
    if PROMPTS in method.needs:
        inputs.prompts = read_prompts(arguments.prompts)
    if PAIRS in method.needs:
        inputs.pairs = read_pairs(arguments.pairs)
    if REWARD_MODEL in method.needs:
        inputs.reward_model = reward_model_from(arguments)
    result = method.train(inputs, arguments.out, config, on_step=None)
    last = {key: value for entry in result.history for key, value in entry.items() if key != "step"}
    json.dump({"method": method.name, "config": config_to_dict(config), "out": str(arguments.out),
               "seconds": round(result.seconds, 1), "examples": result.examples, "summary": result.summary,
               "last_metrics": last}, sys.stdout, indent=2)
    sys.stdout.write("\n")
