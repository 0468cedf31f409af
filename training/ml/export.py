"""Exporting what PrefLoop trained so that it runs without PrefLoop.

A policy version exports either as its LoRA adapter (small; load it on the base with
peft) or merged into a plain Hugging Face model directory: safetensors weights, the
tokenizer with its chat template, the generation config, so that
`AutoModelForCausalLM.from_pretrained(dir)` loads and generates with nothing else. A
reward model exports merged into an `AutoModelForSequenceClassification` directory whose
config carries the normalization the app scores with (`prefloop_reward_mean` and
`prefloop_reward_std`: normalized reward = (logit - mean) / std) and, for a version
trained with left truncation, how many of an input's last tokens it reads
(`prefloop_reward_keep_last_tokens`; None: the whole input). Its prefloop_export.json
and README.md say exactly how an input is built, and it ships the app's own scoring
code (training/ml/standalone_scoring.py) as score.py.

Plain functions, no Django; `python -m training.ml.export --help` runs them by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch

from training.ml import standalone_scoring
from training.ml.precision import Precision

EXPORT_FORMATS = ("merged", "adapter")
EXPORT_DTYPES = ("fp32", "bf16", "fp16")
"""The dtypes a merged export's weights may be written in (training/ml/precision.py
names); an adapter exports as it was trained (fp32)."""
MANIFEST = "prefloop_export.json"
SCORING_FILE = "score.py"
"""A reward-model export's copy of training/ml/standalone_scoring.py."""
REWARD_EXPORT_FORMAT = 2
"""2: the export states how inputs are built and ships score.py (1 said only "prompt + answer")."""


def export_precision(dtype: str) -> Precision:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}")
    return Precision(dtype)


def export_policy(base_model_dir: Path | str, adapter_dir: Path | str | None, out_dir: Path, form: str,
                  about: dict | None = None, dtype: str = "fp32") -> Path:
    """Write the policy into `out_dir` (which must not exist) as `form` ("merged" or
    "adapter"); `about` (version, run, method...) goes into prefloop_export.json. A
    merged export is merged in fp32 and its weights written in `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    precision = export_precision(dtype)
    if form not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, not {form!r}")
    if form == "adapter" and not adapter_dir:
        raise ValueError("the base version has no adapter; export it merged")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)  # as the base ships it: its pad and chat template
    if form == "adapter":
        for item in Path(adapter_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, out_dir / item.name)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        model.to(precision.dtype).save_pretrained(out_dir, safe_serialization=True)
        try:
            GenerationConfig.from_pretrained(base_model_dir).save_pretrained(out_dir)
        except OSError:  # the base has none: the model's own defaults were saved above
            pass
    tokenizer.save_pretrained(out_dir)
    manifest = {"format": form, "base_model_dir": str(base_model_dir),
                "dtype": dtype if form == "merged" else "fp32", **(about or {})}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def export_reward_model(base_model_dir: Path | str, weights_dir: Path | str, out_dir: Path, mean: float, std: float,
                        about: dict | None = None, dtype: str = "fp32") -> Path:
    """Write a reward model version merged (in fp32) into a plain sequence-classification
    directory, its weights in `dtype`, its normalization in config.json."""
    from training.ml.reward_loading import input_limit, load_reward_model

    precision = export_precision(dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    model, tokenizer = load_reward_model(base_model_dir, weights_dir, torch.device("cpu"), precision)
    model.config.prefloop_reward_mean, model.config.prefloop_reward_std = float(mean), float(std)
    # A version trained with left truncation reads only an input's last tokens; scored
    # whole, long inputs would get other rewards than the app gives them.
    keep_last = input_limit(weights_dir)
    model.config.prefloop_reward_keep_last_tokens = keep_last
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shutil.copyfile(standalone_scoring.__file__, out_dir / SCORING_FILE)
    manifest = {"format": "merged", "kind": "reward_model", "export_format": REWARD_EXPORT_FORMAT,
                "base_model_dir": str(base_model_dir), "dtype": dtype,
                "normalized_reward": "(logits[0] - prefloop_reward_mean) / prefloop_reward_std",
                "input": reward_input_spec(keep_last), "scoring_function": f"{SCORING_FILE}: score(prompt_messages, "
                "answer, ended=True) -> float, the normalized reward (imports only torch and transformers)",
                **(about or {})}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (out_dir / "README.md").write_text(reward_model_readme(manifest))
    return out_dir


def reward_input_spec(keep_last: int | None) -> dict:
    """How the app builds a reward model's input (training/ml/standalone_scoring.py), in
    the words prefloop_export.json gives them: scored any other way (the chat template
    over prompt and answer together), rewards differ."""
    return {
        "prompt": "tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=True): "
                  "the templated prompt, ending where the assistant's answer begins",
        "answer": "tokenizer(answer, add_special_tokens=False).input_ids, appended to the prompt's ids",
        "end_of_answer": "tokenizer.eos_token_id once if the answer ended, and nothing after it (no newline: the "
                         "chat template's rendering of an assistant turn adds one, which moves the score); no EOS "
                         "for an answer cut off at a length limit",
        "truncation": f"only the last {keep_last} tokens (prefloop_reward_keep_last_tokens)" if keep_last
                      else "none: the whole input",
        "padding": "right, with tokenizer.pad_token_id (distinct from EOS); the score is the logit at the last "
                   "token that is not padding",
    }


def reward_model_readme(manifest: dict) -> str:
    spec = manifest["input"]
    steps = "\n".join(f"- {name.replace('_', ' ')}: {text}" for name, text in spec.items())
    return f"""# PrefLoop reward model{f" r{manifest['version']}" if "version" in manifest else ""}

A plain `AutoModelForSequenceClassification` directory. `config.json` carries the
normalization the app scores with: normalized reward = `{manifest["normalized_reward"]}`.

## Scoring it as PrefLoop does

`{SCORING_FILE}` in this folder is PrefLoop's own input-building and scoring code (it imports
only torch and transformers):

    import sys; sys.path.insert(0, "path/to/this/folder")
    from score import score
    score([{{"role": "user", "content": "Hi!"}}], "Hello! How can I help?")   # a float

or `python score.py < items.jsonl` with one `{{"prompt": [...], "answer": "...", "ended": true}}`
a line. Building the input any other way gives other rewards. In particular, do not render
prompt and answer together through the chat template: it closes the answer with EOS and a
newline, and the model reads the position of that newline. The input, token by token:

{steps}
"""


def iter_tar(folder: Path, arcname: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """An uncompressed tar of `folder` (safetensors hardly compress), produced piece by
    piece (a header, the file in chunks, its padding) so a web response streams a
    model of any size without holding it in memory."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        info = tarfile.TarInfo(f"{arcname}/{path.relative_to(folder).as_posix()}")
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as file:
            while block := file.read(chunk_size):
                yield block
        if info.size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a PrefLoop policy as a plain Hugging Face model.")
    parser.add_argument("--base", required=True, help="base model directory")
    parser.add_argument("--adapter", help="the version's adapter directory (none for the base itself)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="merged")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32", help="weights of a merged export")
    args = parser.parse_args()
    export_policy(args.base, args.adapter, args.out, args.format, dtype=args.dtype)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
