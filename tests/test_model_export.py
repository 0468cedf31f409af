"""Model export (issue 11, item 3): a policy version leaves PrefLoop as a plain Hugging
Face model directory that transformers alone loads and generates from (checked in an
isolated interpreter that cannot import PrefLoop), or as its LoRA adapter; a reward
model leaves as a sequence-classification directory with its normalization in the
config; the version page's download streams a tar; `manage.py export_policy` writes a
folder."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse

from tests.test_reward_model_ml import marker_pairs
from training.ml.export import MANIFEST
from training.ml.loading import load_policy
from training.ml.reward_loading import HEAD_FILE, load_reward_model
from training.ml.reward_training import RewardTrainingConfig, train_reward_model
from training.models import PolicyVersion, RewardModelVersion
from training.services.exports import policy_export, reward_model_export

pytestmark = pytest.mark.django_db

PROMPT = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture
def trained_version(tiny_run, tmp_path, settings) -> PolicyVersion:
    """v1 of the tiny run: a LoRA adapter whose weights are far from zero, so merging
    it changes what the model says."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    settings.PREFLOOP_EXPORT_DIR = tmp_path / "exports"
    base = tiny_run.base_version
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base.base_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    return PolicyVersion.objects.create(number=1, run=tiny_run, parent=base, method="sft_chosen",
                                        base_model_dir=base.base_model_dir, adapter_dir=str(tmp_path / "adapter"))


def greedy_ids(model, tokenizer) -> list[int]:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_a_merged_export_loads_and_generates_with_transformers_alone(trained_version, tmp_path):
    folder = policy_export(trained_version, "merged")

    assert {"model.safetensors", "config.json", "generation_config.json", "prefloop_export.json"} <= {
        p.name for p in folder.iterdir()}
    assert not (folder / "adapter_config.json").exists()
    manifest = json.loads((folder / "prefloop_export.json").read_text())
    assert (manifest["version"], manifest["format"], manifest["method"]) == (1, "merged", "sft_chosen")
    # `python -I`: no project directory, no PYTHONPATH, so nothing of PrefLoop can load.
    script = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
ids = tokenizer.apply_chat_template({PROMPT!r}, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
import sys
assert not any(name.split(".")[0] in ("training", "labeling", "prefloop") for name in sys.modules)
print(json.dumps(out[0, ids["input_ids"].shape[1]:].tolist()))
"""
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = json.loads(done.stdout.strip().splitlines()[-1])

    inside = greedy_ids(*load_policy(trained_version.base_model_dir, trained_version.adapter_dir))
    base = greedy_ids(*load_policy(trained_version.base_model_dir))
    assert exported == inside  # the same model PrefLoop samples from
    assert exported != base  # and not the base: the adapter is in it


def test_an_adapter_export_is_the_adapter_with_the_tokenizer(trained_version):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = policy_export(trained_version, "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained_version.base_model_dir), folder)
    assert greedy_ids(model, tokenizer) == greedy_ids(*load_policy(trained_version.base_model_dir,
                                                                   trained_version.adapter_dir))


def test_the_version_page_streams_a_tar_to_staff_only(trained_version, client, people):
    url = reverse("download_policy", args=[1]) + "?format=merged"
    client.force_login(people.annotator)
    assert client.get(url).status_code == 403
    client.force_login(people.researcher)

    response = client.get(url)

    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"] == 'attachment; filename="prefloop-v1-merged.tar"'
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content))) as archive:
        names = archive.getnames()
        config = json.loads(archive.extractfile("prefloop-v1-merged/config.json").read())
    assert "prefloop-v1-merged/model.safetensors" in names and config["model_type"] == "llama"
    assert client.get(reverse("download_policy", args=[1]) + "?format=zip").status_code == 400
    assert client.get(reverse("download_policy", args=[0]) + "?format=adapter").status_code == 400
    page = client.get(reverse("version_detail", args=[1])).content.decode()
    assert "?format=merged" in page and "?format=adapter" in page


def test_export_policy_command_copies_the_export_to_a_folder(trained_version, tmp_path):
    out = tmp_path / "mine"
    call_command("export_policy", "1", "--format", "merged", "--out", str(out))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_policy", "1", "--out", str(out))
    with pytest.raises(CommandError, match="no policy version 9"):
        call_command("export_policy", "9", "--out", str(tmp_path / "other"))


def test_a_reward_model_exports_as_a_plain_classifier_with_its_normalization(tiny_run, tmp_path, settings):
    from transformers import AutoModelForSequenceClassification

    settings.PREFLOOP_EXPORT_DIR = tmp_path / "exports"
    config = RewardTrainingConfig(learning_rate=3e-3, epochs=1, ensemble_size=0, truncation="left", max_length=64)
    train_reward_model(marker_pairs(16), tiny_run.base_model_dir, tmp_path / "rm", config)
    assert (tmp_path / "rm" / HEAD_FILE).is_file()  # the head fitted after training: the export must carry it
    version = RewardModelVersion.objects.create(number=1, run=tiny_run, base_model_dir=tiny_run.base_model_dir,
                                                weights_dir=str(tmp_path / "rm"), label_count=16,
                                                reward_mean=0.25, reward_std=2.0)

    folder = reward_model_export(version)

    exported = AutoModelForSequenceClassification.from_pretrained(folder)
    assert (exported.config.prefloop_reward_mean, exported.config.prefloop_reward_std) == (0.25, 2.0)
    assert exported.config.prefloop_reward_keep_last_tokens == 64  # trained with left truncation
    assert "last 64 tokens" in json.loads((Path(folder) / MANIFEST).read_text())["input"]["truncation"]
    inside, tokenizer = load_reward_model(version.base_model_dir, version.weights_dir, torch.device("cpu"))
    ids = tokenizer(["I like banana bread", "plain toast"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert torch.allclose(exported.eval()(**ids).logits, inside(**ids).logits, atol=1e-5)
    assert not (Path(folder) / "adapter_config.json").exists()


def test_two_requests_for_one_export_build_it_once_and_a_killed_build_is_cleaned_up(tmp_path):
    from threading import Barrier, Thread

    from training.services.exports import build_once

    final = tmp_path / "exports" / "policy-v7-merged"
    final.parent.mkdir()
    (final.parent / ".policy-v7-merged.deadbeef.partial").mkdir()  # left by a build that was killed
    builds, start = [], Barrier(2)

    def build(out: Path):
        builds.append(out)
        out.mkdir()
        (out / "model.safetensors").write_text("weights")

    def request():
        start.wait()
        assert build_once(final, build) == final

    threads = [Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and (final / "model.safetensors").read_text() == "weights"
    assert not list(final.parent.glob("*.partial"))
