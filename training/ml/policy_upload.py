"""An outside trainer's policy, checked before PrefLoop publishes it as a version: its
archive unpacked without trusting a single name or size in it, then the LoRA adapter or
merged model read against the run's base model, tensor by tensor, from the safetensors
headers (no weights loaded, no code from the upload run), and, where the base is small,
loaded for real and run for one token.

What is refused, and why:
- archive members that are links, devices, absolute paths, `..`, or more files or
  bytes than the limits: an archive names its own paths, and the server writes them;
- pickled weights (`*.bin`, `*.pt`, ...): unpickling an upload runs its code;
- an adapter whose tensors do not fit the base's modules (another model, another size,
  a module the base lacks), a merged model of another architecture or shape, and a
  tokenizer that maps text to other ids than the base's (the run's prompts would mean
  something else to it).

No Django: the training app's service (training/services/outside_policies.py) calls
`unpack_archive` and `check_policy` inside its publishing transaction; the command line
checks a folder before it is uploaded:

    python -m training.ml.policy_upload --base var/models/base --adapter out/adapter
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

FORMS = ("adapter", "merged")
"""What an outside trainer may upload: a PEFT LoRA adapter on the run's base, or a whole
(merged) model of the base's architecture and shape."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
FORWARD_CHECK_MAX_BYTES = 1 << 30
"""Bases up to this size (SmolLM2-135M in fp32 is 538 MB) are loaded with the upload and
run for one token; larger ones are checked from the headers alone, so that a web request
never loads a 7B model."""
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "head_dim")


class UploadRefused(ValueError):
    """The upload cannot become a version; the message says what is wrong with it."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one unpacked upload may hold."""

    max_bytes: int
    """All its files together, counted while they are written (a header's size is a claim)."""
    max_files: int = 1000
    """Files and folders in it."""


def unpack_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> Path:
    """Unpack a .tar, .tar.gz (or any tar compression Python reads) or .zip into `dest`
    (an empty folder) and return the model folder: `dest` itself, or its only top-level
    folder when everything sits in one (`tar czf adapter.tgz adapter/`). UploadRefused
    for anything unsafe or over the limits; the caller removes `dest` then."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        unpack_zip(archive, dest, limits)
    else:
        try:
            with tarfile.open(archive, "r:*") as tar:
                unpack_tar(tar, dest, limits)
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
            raise UploadRefused(f"not a readable .tar, .tar.gz or .zip archive ({error})") from error
    entries = [p for p in dest.iterdir()]
    if not entries:
        raise UploadRefused("the archive is empty")
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def member_path(name: str) -> PurePosixPath:
    """A member's path, relative and inside the archive (`.` for the archive's own top,
    as `tar -C folder .` writes it), or UploadRefused."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or name.startswith(("/", "\\")) or ":" in "".join(path.parts[:1]):
        raise UploadRefused(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UploadRefused(f"archive member {name!r} points outside the archive (..)")
    if "\x00" in name:
        raise UploadRefused("an archive member's name contains a NUL character")
    return path


class Budget:
    """Counts files and bytes as they are written, refusing past the limits."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits, self.files, self.bytes = limits, 0, 0

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UploadRefused(f"the archive holds more than {self.limits.max_files} files")

    def copy(self, source, target: Path) -> None:
        with target.open("xb") as out:  # "x": a second member of the same name is refused, not merged
            while block := source.read(1 << 20):
                self.bytes += len(block)
                if self.bytes > self.limits.max_bytes:
                    raise UploadRefused(f"the archive unpacks to more than {self.limits.max_bytes} bytes")
                out.write(block)


def target_of(dest: Path, relative: PurePosixPath) -> Path:
    target = dest.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(dest.resolve()):  # belt and braces: no links are ever made
        raise UploadRefused(f"archive member {relative} points outside the archive")
    return target


def unpack_tar(tar: tarfile.TarFile, dest: Path, limits: ArchiveLimits) -> None:
    budget = Budget(limits)
    for member in tar:  # streamed: a .tar.gz is read once, front to back
        relative = member_path(member.name)
        budget.add_file()
        if member.isdir() and not relative.parts:  # the top itself
            continue
        if member.isdir():
            target_of(dest, relative / "_")  # makes the folder
            continue
        if not member.isfile():
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise UploadRefused(f"archive member {member.name!r} is a {kind}; only files and folders are accepted")
        source = tar.extractfile(member)
        try:
            budget.copy(source, target_of(dest, relative))
        except FileExistsError as error:
            raise UploadRefused(f"archive member {member.name!r} appears twice") from error


def unpack_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    budget = Budget(limits)
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                relative = member_path(info.filename)
                budget.add_file()
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0o100000, 0o040000, 0):
                    raise UploadRefused(f"archive member {info.filename!r} is a link or special file; "
                                        "only files and folders are accepted")
                if info.is_dir():
                    if relative.parts:
                        target_of(dest, relative / "_")  # makes the folder
                    continue
                with zipped.open(info) as source:
                    try:
                        budget.copy(source, target_of(dest, relative))
                    except FileExistsError as error:
                        raise UploadRefused(f"archive member {info.filename!r} appears twice") from error
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError, OSError,
            zlib.error) as error:  # RuntimeError: an encrypted member
        raise UploadRefused(f"not a readable .zip archive ({error})") from error


# --- what the folder holds


def refuse_pickles(folder: Path) -> None:
    pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UploadRefused(f"pickled weights are never loaded from an upload (unpickling runs code): "
                            f"{', '.join(pickled[:5])}; save with safetensors (save_pretrained's default)")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, from the safetensors headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (safe_open is no mapping)
                    shapes[key] = tuple(weights.get_slice(key).get_shape())
        except Exception as error:  # safetensors raises its own SafetensorError, or OSError
            raise UploadRefused(f"{path.name} is not a readable safetensors file ({error})") from error
    return shapes


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UploadRefused(f"{path.name} is not readable JSON ({error})") from error
    if not isinstance(value, dict):
        raise UploadRefused(f"{path.name} is not a JSON object")
    return value


def base_on_meta(base_model_dir: Path):
    """The base model's modules and their shapes, without its weights (the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


def check_adapter(base_model_dir: Path, adapter_dir: Path) -> dict:
    """A PEFT LoRA adapter for a causal LM whose every tensor fits a module of the base.
    Returns what it is (rank, target modules, trainable parameters)."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise UploadRefused("no adapter_config.json: upload the folder PEFT's save_pretrained wrote "
                            "(or choose form=merged for a whole model)")
    adapter = read_json(config_path)
    if adapter.get("peft_type") != "LORA":
        raise UploadRefused(f"only LoRA adapters are accepted (this one is {adapter.get('peft_type')!r})")
    if adapter.get("task_type") not in (None, "CAUSAL_LM"):
        raise UploadRefused(f"the adapter is for task {adapter['task_type']!r}, not CAUSAL_LM")
    refuse_pickles(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UploadRefused("no adapter_model.safetensors in the adapter folder")
    shapes = tensor_shapes([weights])
    if not shapes:
        raise UploadRefused("adapter_model.safetensors holds no tensors")
    model, _ = base_on_meta(base_model_dir)
    modules = dict(model.named_modules())
    base_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    ranks, targets = set(), set()
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for part, expected in (("lora_A.weight", lambda m, r: (r, m.in_features)),
                               ("lora_B.weight", lambda m, r: (m.out_features, r)),
                               ("lora_embedding_A", lambda m, r: (r, m.num_embeddings)),
                               ("lora_embedding_B", lambda m, r: (m.embedding_dim, r))):
            if name.endswith("." + part):
                path = name[: -len(part) - 1]
                module = modules.get(path)
                if module is None:
                    raise UploadRefused(f"the adapter adapts {path!r}, which the base model does not have "
                                        "(an adapter for another model?)")
                rank = shape[0] if "_A" in part else shape[-1]  # A: (r, in), B: (out, r)
                try:
                    wanted = expected(module, rank)
                except AttributeError as error:
                    raise UploadRefused(f"the adapter adapts {path!r} as a kind of layer it is not") from error
                if tuple(shape) != wanted:
                    raise UploadRefused(f"{key} has shape {list(shape)}, but the base's {path} needs {list(wanted)} "
                                        "(an adapter for a model of another size?)")
                ranks.add(rank)
                targets.add(path.rsplit(".", 1)[-1])
                break
        else:
            if "lora_magnitude_vector" in name:
                raise UploadRefused("DoRA adapters are not accepted; train a plain LoRA adapter")
            if name not in base_shapes:  # modules_to_save: whole copies of base modules
                raise UploadRefused(f"the adapter holds {key!r}, which matches nothing in the base model")
            if tuple(shape) != base_shapes[name]:
                raise UploadRefused(f"{key} has shape {list(shape)}, but the base's needs {list(base_shapes[name])}")
    if not targets:
        raise UploadRefused("the adapter holds no LoRA weights")
    if adapter.get("r") is not None and ranks != {adapter["r"]}:
        raise UploadRefused(f"adapter_config.json says r={adapter['r']}, its tensors have rank {sorted(ranks)}")
    parameters = sum(_count(shape) for shape in shapes.values())
    return {"form": "adapter", "r": adapter.get("r"), "lora_alpha": adapter.get("lora_alpha"),
            "target_modules": sorted(targets), "parameters": parameters}


def check_merged_model(base_model_dir: Path, model_dir: Path) -> dict:
    """A whole model with the base's architecture and shape: every tensor the base has,
    in its shape, and nothing else."""
    if not (model_dir / "config.json").is_file():
        raise UploadRefused("no config.json: upload the folder save_pretrained wrote (or form=adapter for an adapter)")
    uploaded = read_json(model_dir / "config.json")
    base = read_json(base_model_dir / "config.json")
    differing = [f"{key} {uploaded.get(key)!r} (the base: {base.get(key)!r})" for key in SHAPE_KEYS
                 if key in base and uploaded.get(key) != base.get(key)]
    if uploaded.get("architectures") != base.get("architectures"):
        differing.append(f"architectures {uploaded.get('architectures')!r} (the base: {base.get('architectures')!r})")
    if differing:
        raise UploadRefused(f"the model is not the run's base architecture: {'; '.join(differing)}")
    refuse_pickles(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UploadRefused("no *.safetensors weights in the model folder")
    shapes = tensor_shapes(files)
    model, config = base_on_meta(base_model_dir)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = set(expected) - set(shapes)
    if getattr(config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")  # saved once, as the embedding
    extra = set(shapes) - set(expected)
    if missing or extra:
        raise UploadRefused(f"the model's tensors are not the base's: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(extra)[:5]}")
    wrong = [f"{key} {list(shapes[key])} (the base: {list(expected[key])})" for key in shapes
             if shapes[key] != expected[key]]
    if wrong:
        raise UploadRefused(f"tensors of another shape than the base's: {'; '.join(wrong[:5])}")
    return {"form": "merged", "parameters": sum(_count(shape) for shape in shapes.values())}


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def check_tokenizer(base_model_dir: Path, folder: Path, required: bool) -> None:
    """The upload's tokenizer, if it has one, must turn text into the base's ids with the
    base's chat template. A merged model without one (`required`) gets the base's copied
    in, since versions sample with their own folder's tokenizer."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        if required:
            AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(folder)
        return
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # transformers raises many kinds for a broken tokenizer
        raise UploadRefused(f"the upload's tokenizer does not load ({type(error).__name__}: {error})") from error
    base = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.get_vocab() != base.get_vocab():
        raise UploadRefused(f"the upload's tokenizer has another vocabulary than the base's ({len(tokenizer)} "
                            f"tokens, the base {len(base)}): the run's prompts would read as other ids")
    if tokenizer.chat_template != base.chat_template:
        raise UploadRefused("the upload's tokenizer has another chat template than the base's: the run's prompts "
                            "would be formatted otherwise; save the base's tokenizer with it, or none")


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def check_forward(base_model_dir: Path, adapter_dir: Path | None, model_dir: Path | None) -> bool:
    """Load the policy as sampling will and run it for one token; False when the base is
    too large to do so in a request (FORWARD_CHECK_MAX_BYTES)."""
    import torch

    from training.ml.loading import load_policy

    if weights_bytes(model_dir or base_model_dir) > FORWARD_CHECK_MAX_BYTES:
        return False
    try:
        model, tokenizer = load_policy(model_dir or base_model_dir, adapter_dir, device=torch.device("cpu"),
                                       precision="fp32")
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[start]])).logits  # (1, 1, vocab)
    except Exception as error:  # what fails to load here would fail every job that samples it
        raise UploadRefused(f"the policy does not load on the base ({type(error).__name__}: {error})") from error
    if not torch.isfinite(logits).all():
        raise UploadRefused("the policy's first-token logits are not finite (NaN or infinite weights)")
    return True


def check_policy(base_model_dir: Path, folder: Path, form: str) -> dict:
    """Every check of an upload of `form` ("adapter" or "merged"), in order of cost.
    Returns what it found, for the version's record."""
    if form not in FORMS:
        raise UploadRefused(f"form must be one of {', '.join(FORMS)}")
    base_model_dir, folder = Path(base_model_dir), Path(folder)
    if form == "adapter":
        found = check_adapter(base_model_dir, folder)
        check_tokenizer(base_model_dir, folder, required=False)
        found["forward_checked"] = check_forward(base_model_dir, folder, None)
    else:
        found = check_merged_model(base_model_dir, folder)
        check_tokenizer(base_model_dir, folder, required=True)
        found["forward_checked"] = check_forward(base_model_dir, None, folder)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Check an adapter or merged model before uploading it to PrefLoop.")
    parser.add_argument("--base", required=True, type=Path, help="the run's base model directory")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter folder")
    chosen.add_argument("--merged", type=Path, help="a whole model folder")
    args = parser.parse_args()
    folder, form = (args.adapter, "adapter") if args.adapter else (args.merged, "merged")
    scratch = None
    if form == "merged":  # check_tokenizer may add the base's tokenizer: check a copy
        scratch = folder.with_name(folder.name + ".check")
        shutil.copytree(folder, scratch)
        folder = scratch
    try:
        print(json.dumps(check_policy(args.base, folder, form), indent=2))
    except UploadRefused as error:
        raise SystemExit(f"refused: {error}") from error
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
