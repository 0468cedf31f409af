"""The memory plan's predicted peaks for every method on real models' shapes (built from
their configs on the meta device, no download), in fp32, bf16, and bf16 with gradient
checkpointing, and that with 4-bit frozen weights (nf4), against 24, 48 and 80 GB GPUs:
a markdown table for docs/benchmarks.md.

    .venv/bin/python scripts/memory_table.py --shapes qwen2.5-1.5b,llama-3.1-8b

Predicted, not measured: each method's registry defaults, a fresh LoRA adapter from the
base, prompts of --prompt-tokens tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.ml.memory_plan import GIB, known_shape, plan_for_method  # noqa: E402
from training.ml.methods import METHODS  # noqa: E402

CARDS = (24, 48, 80)
SETUPS = (("fp32", False, "none"), ("bf16", False, "none"), ("bf16", True, "none"), ("bf16", True, "nf4"))


def fits(gib: float) -> str:
    largest = [card for card in CARDS if gib <= card]
    return f"{largest[0]} GB" if largest else "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="qwen2.5-1.5b,llama-3.1-8b")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    args = parser.parse_args()
    header = ["model", "method", *(f"{dtype}{' + checkpointing' if ckpt else ''}{' + nf4' if quant != 'none' else ''}"
                                   for dtype, ckpt, quant in SETUPS)]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name in args.shapes.split(","):
        shape = known_shape(name)
        for method_name, method in METHODS.items():
            cells = []
            for dtype, ckpt, quant in SETUPS:
                plan = plan_for_method(shape, method_name, method.config(), args.prompt_tokens, dtype=dtype,
                                       gradient_checkpointing=ckpt, device="cuda", quantization=quant)
                cells.append(f"{plan.total / GIB:.1f} GiB (fits {fits(plan.total / GIB)})")
            print(f"| {name} | `{method_name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
