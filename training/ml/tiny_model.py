"""A tiny random-initialized Llama with SmolLM2's real tokenizer and chat template: the
same code paths as the real model, in a fraction of a second. Tests and CI smoke runs
use it; it learns, but it writes gibberish."""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(out_dir: Path, tokenizer, seed: int = 0, output_scale: float = 1.0) -> Path:
    """`output_scale` multiplies the (then untied) output layer: at 1 the random policy
    samples almost uniformly over the vocabulary; around 20 it favours a handful of
    tokens per context, a policy PPO can push towards or away from in a few steps. The
    layers inside keep their small initialization, so they stay easy to steer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=output_scale == 1.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    if output_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(output_scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
