"""4-bit loading of the frozen models of a job, where bitsandbytes works (CUDA).

A run's `frozen_quantization` says "none" or "nf4". With "nf4", the frozen weights a
job keeps but never trains load as 4-bit NormalFloat with double quantization
(QLoRA's recipe, bitsandbytes through transformers' BitsAndBytesConfig), computing in
the run's precision:
- the reward model that scores (comparisons' selection, evaluation, the reward function
  of GRPO/RLOO/online DPO, PPO's and best-of-N's judge), its LoRA adapter kept unmerged
  on the quantized backbone and its score head unquantized;
- the policy's base under the LoRA adapter that trains (QLoRA), which with the adapter
  switched off is also the KL reference: so the reference is 4-bit too.
Policies that only sample (comparisons, evaluation) are not quantized: the answers
people label come from the policy as trained.

Refused, with the reason, where bitsandbytes is not importable or the worker has no
CUDA device (`setting_refusal`, `require_quantization`), never silently ignored.
"""

from __future__ import annotations

import importlib.util

FROZEN_QUANTIZATIONS = ("none", "nf4")
DEFAULT_QUANTIZATION = "none"
BYTES_PER_4BIT_WEIGHT = 0.5 + 0.127 / 8
"""4 bits a weight, plus the double-quantized absmax scales (QLoRA: 0.127 bits a weight)."""
UNQUANTIZED_MODULES = ["score", "lm_head"]
"""Heads stay in the compute dtype (bitsandbytes skips the LM head by itself)."""


class QuantizationUnavailable(RuntimeError):
    """4-bit loading cannot run on this machine; the message says why and what to choose."""


def setting_refusal(kind: str, device=None) -> str | None:
    """Why a run cannot load its frozen models as `kind` here (None: it can). Without a
    device, only whether bitsandbytes is installed (what a web process can tell)."""
    if kind not in FROZEN_QUANTIZATIONS:
        return f"frozen_quantization must be one of {', '.join(FROZEN_QUANTIZATIONS)}, not {kind!r}"
    if kind == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return ("frozen_quantization 'nf4' needs the bitsandbytes package, which is not importable in this "
                "installation (pip install bitsandbytes on a CUDA machine, in the workers' environment); "
                "choose 'none'")
    if device is not None and getattr(device, "type", device) != "cuda":
        return "frozen_quantization 'nf4' loads 4-bit weights on a CUDA GPU and this worker has none; choose 'none'"
    return None


def require_quantization(kind: str | None, device) -> str:
    kind = kind or DEFAULT_QUANTIZATION
    if (why := setting_refusal(kind, device)) is not None:
        raise QuantizationUnavailable(why)
    return kind


def quantization_config(kind: str | None, compute_dtype):
    """transformers' `quantization_config` for from_pretrained (None for "none")."""
    if (kind or DEFAULT_QUANTIZATION) == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=UNQUANTIZED_MODULES)
