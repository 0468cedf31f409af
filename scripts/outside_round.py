"""One online round outside PrefLoop, with nothing but its REST API and TRL: what a team's
own trainer does (docs/outside-trainer.md). It imports nothing from PrefLoop.

    pull the run's labeled pairs  GET  /runs/{run}/preferences?since=CURSOR
    train on them                 trl.DPOTrainer, a LoRA adapter on the run's base model
    push the version              POST /runs/{run}/versions (the adapter as a .tar.gz),
                                  asking PrefLoop to have it answer prompts against its parent
    wait for its answers          GET  /jobs/{job}: its comparisons are then in /label/
    (people label them)           --label-as KEY: an annotator's key labels them here instead,
                                  for a demo or a test; left out, people label in /label/
    pull the new labels           GET  /runs/{run}/preferences?since=CURSOR, from where the
                                  first pull stopped

The cursor is kept in --cursor-file, so the next round pulls only what is new. Prints
what it did as one JSON object on its last line.

    python scripts/outside_round.py --api http://127.0.0.1:8000/api/v1 --token $TOKEN \\
        --run 1 --base-model var/models/smollm2-135m-instruct --out /tmp/round1
"""

from __future__ import annotations

import argparse
import json
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass
class RoundConfig:
    """One outside round; the defaults are for a smoke test on a tiny model."""

    api: str
    """PrefLoop's API root, e.g. http://127.0.0.1:8000/api/v1."""
    token: str
    """A researcher's (staff) key."""
    run: int
    """The run's id (GET /runs)."""
    base_model: Path
    """The run's base model, as a local Hugging Face directory (the same weights)."""
    out: Path
    """Where the adapter and its archive are written."""
    cursor_file: Path | None = None
    """Keeps the label cursor between rounds; none: start from the first label."""
    steps: int = 1
    """DPO optimizer steps."""
    batch_size: int = 2
    learning_rate: float = 5e-5
    compare_prompts: int = 2
    """Prompts PrefLoop has the new version answer, twice each, and its parent once."""
    label_as: str | None = None
    """An annotator's key that labels the new comparisons (demo/test); none: people do."""
    seed: int = 0
    timeout: float = 600.0
    """Seconds to wait for PrefLoop's generation job."""


class PrefLoop:
    """The few API calls a round makes, with errors that say what PrefLoop answered."""

    def __init__(self, api: str, token: str) -> None:
        self.api, self.session = api.rstrip("/"), requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.api}{path}", timeout=300, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def preferences_since(self, run: int, since: int) -> tuple[list[dict], int]:
        """Every settled label after `since`, page by page, and the cursor after them."""
        rows: list[dict] = []
        while True:
            page = self.call("GET", f"/runs/{run}/preferences", params={"since": since, "limit": 500})
            rows += page["rows"]
            if page["next"] == since:
                return rows, since
            since = page["next"]


def read_cursor(path: Path | None) -> int:
    return int(path.read_text()) if path is not None and path.is_file() else 0


def dpo_rows(labels: list[dict]) -> list[dict]:
    """TRL's conversational preference format, a row per (chosen, rejected) pair."""
    return [{"prompt": label["prompt"], "chosen": pair["chosen"]["messages"], "rejected": pair["rejected"]["messages"]}
            for label in labels for pair in label["pairs"]]


def train_dpo(config: RoundConfig, rows: list[dict]) -> Path:
    """A LoRA adapter trained from the base model with TRL's DPOTrainer; its folder."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    on_gpu = torch.cuda.is_available()
    args = DPOConfig(output_dir=str(config.out / "trainer"), max_steps=config.steps,
                     per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
                     max_length=256, bf16=on_gpu, use_cpu=not on_gpu, gradient_checkpointing=False,
                     report_to=[], save_strategy="no", logging_steps=1, seed=config.seed)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(config.base_model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    trainer.train()
    adapter = config.out / "adapter"
    trainer.model.save_pretrained(adapter)  # adapter_config.json + adapter_model.safetensors
    return adapter


def archive(folder: Path) -> Path:
    path = folder.with_suffix(".tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


def wait_for_job(prefloop: PrefLoop, job_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = prefloop.call("GET", f"/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} is still {job['status']} after {timeout:.0f} s")
        time.sleep(1)


def label_new_comparisons(api: str, key: str, seed: int, most: int) -> int:
    """Label what the queue serves this annotator, as a person would in /label/, at most
    `most` comparisons (the round's own number: a demo must not label a whole queue at
    random; the queue is blind, so which ones it serves is the queue's choice)."""
    annotator, rng, labeled = PrefLoop(api, key), random.Random(seed), 0
    while labeled < most and (served := annotator.call("POST", "/labels/next")["comparison"]) is not None:
        annotator.call("POST", "/labels", json={"comparison_id": served["id"], "choice": rng.choice("ab"),
                                                "active_seconds": 1.0})
        labeled += 1
    return labeled


def run_round(config: RoundConfig) -> dict:
    prefloop = PrefLoop(config.api, config.token)
    config.out.mkdir(parents=True, exist_ok=True)
    versions = prefloop.call("GET", f"/runs/{config.run}/versions")
    parent = next(v for v in versions if v["form"] == "base")  # this round trains from the base model

    cursor = read_cursor(config.cursor_file)
    labels, cursor = prefloop.preferences_since(config.run, cursor)
    rows = dpo_rows(labels)
    if not rows:
        raise SystemExit("the run has no settled preference labels to train on yet")
    adapter = train_dpo(config, rows)

    with archive(adapter).open("rb") as file:
        pushed = prefloop.call("POST", f"/runs/{config.run}/versions", files={"file": ("adapter.tar.gz", file)},
                               data={"form": "adapter", "parent": parent["number"],
                                     "compare_prompts": config.compare_prompts,
                                     "note": f"outside_round.py: DPO, {config.steps} step(s) on {len(rows)} pairs"})
    job = wait_for_job(prefloop, pushed["job_id"], config.timeout) if pushed["job_id"] else None
    if job is not None and job["status"] != "succeeded":
        raise SystemExit(f"PrefLoop's generation job {job['id']} {job['status']}: {job['error']}")

    # Two comparisons a prompt: two answers of the new version, and its first against its parent's.
    labeled = (label_new_comparisons(config.api, config.label_as, config.seed, 2 * config.compare_prompts)
               if config.label_as else 0)
    new_labels, cursor = prefloop.preferences_since(config.run, cursor)
    if config.cursor_file is not None:
        config.cursor_file.write_text(str(cursor))
    return {"version": pushed["version"]["number"], "parent": parent["number"], "trained_on_pairs": len(rows),
            "job": pushed["job_id"], "job_status": job["status"] if job else None,
            "labeled": labeled, "new_labels": [row["label_id"] for row in new_labels], "cursor": cursor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--run", required=True, type=int)
    parser.add_argument("--base-model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cursor-file", type=Path)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--compare-prompts", type=int, default=2)
    parser.add_argument("--label-as", help="an annotator's key that labels the new comparisons (demo/test)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    config = RoundConfig(api=args.api, token=args.token, run=args.run, base_model=args.base_model, out=args.out,
                         cursor_file=args.cursor_file, steps=args.steps, compare_prompts=args.compare_prompts,
                         label_as=args.label_as, timeout=args.timeout)
    print(json.dumps(run_round(config)))


if __name__ == "__main__":
    main()
