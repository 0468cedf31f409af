"""Outside trainers in the loop (api/routers/outside_trainers.py,
training/services/outside_policies.py): a policy trained elsewhere is uploaded as a
version, checked against the base, all or nothing; its answers become comparisons; the
labels they earn are pulled back by cursor, each once; the reward model is downloadable."""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from api.services import create_token
from labeling import services as labeling
from labeling.models import Comparison, Completion, Label, Prompt
from labeling.services import LabelInput
from training import services
from training.models import OUTSIDE_METHOD, Job, PolicyVersion, RewardModelVersion

pytestmark = pytest.mark.django_db
PREFIX = "/api/v1"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def outside(db, tiny_model_dir, settings, tmp_path, people):
    """A run on the tiny model with five prompts, artifacts under tmp_path, and a
    researcher's and an annotator's key."""
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PREFLOOP_EXPORT_DIR = tmp_path / "exports"
    settings.PREFLOOP_MAX_NEW_TOKENS = 6
    settings.PREFLOOP_OVERLAP_SHARE = 0.0
    settings.PREFLOOP_EVAL_PROMPTS = 0
    for i in range(5):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Question {i}?"}])
    run = services.create_run("outside", str(tiny_model_dir))
    return type("Outside", (), {"run": run, "staff": create_token(people.researcher, "trainer")[1],
                                "annotator": create_token(people.annotator, "labels")[1]})


def save_adapter(base_dir: Path, out: Path, r: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter as PEFT writes it, with non-zero B so it changes the policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


def tar_of(folder: Path, arcname: str = "adapter", compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        tar.add(folder, arcname=arcname)
    return buffer.getvalue()


def tar_with(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def upload(client, outside, data: bytes, name: str = "adapter.tar.gz", key: str | None = None, **fields):
    return client.post(f"{PREFIX}/runs/{outside.run.pk}/versions",
                       {"file": SimpleUploadedFile(name, data), **{k: str(v) for k, v in fields.items()}},
                       **bearer(key or outside.staff))


def published_files(settings) -> list[str]:
    """Every file and folder under the artifacts root but the (empty) policies folder."""
    root = Path(settings.PREFLOOP_ARTIFACT_DIR)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p != root / "policies")


def test_the_schema_lists_the_outside_trainer_routes_for_staff_tokens():
    from api.v1 import api

    paths = api.get_openapi_schema()["paths"]
    for path, method in [("/runs/{run_id}/versions", "get"), ("/runs/{run_id}/versions", "post"),
                         ("/runs/{run_id}/preferences", "get"), ("/runs/{run_id}/reward-model", "get")]:
        assert paths[PREFIX + path][method]["security"] == [{"StaffToken": []}], (path, method)
    upload_body = paths[PREFIX + "/runs/{run_id}/versions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    fields = set(upload_body["schema"]["properties"])
    assert {"file", "form", "parent", "compare_prompts", "make_head", "note"} <= fields


def test_a_runs_versions_list_its_lineage_with_parents_and_head(client, outside, tmp_path):
    adapter = tar_of(save_adapter(Path(outside.run.base_model_dir), tmp_path / "trained"))
    first = upload(client, outside, adapter, make_head="true").json()["version"]["number"]
    # As `tar czf adapter.tgz -C adapter .` writes it: no top folder, a "." member.
    flat = tar_of(save_adapter(Path(outside.run.base_model_dir), tmp_path / "flat"), arcname=".")
    assert "." in tarfile.open(fileobj=io.BytesIO(flat)).getnames()
    second = upload(client, outside, flat, parent=first).json()["version"]["number"]
    base = outside.run.base_version.number
    listed = client.get(f"{PREFIX}/runs/{outside.run.pk}/versions", **bearer(outside.staff)).json()
    assert [(v["number"], v["parent"], v["form"], v["is_head"]) for v in listed] == [
        (base, None, "base", False), (first, base, "adapter", True), (second, first, "adapter", False)]


def test_an_adapter_upload_becomes_a_version_whose_answers_are_compared_with_its_parent(
        client, outside, tmp_path, settings, people):
    adapter = save_adapter(Path(outside.run.base_model_dir), tmp_path / "trained")
    response = upload(client, outside, tar_of(adapter), compare_prompts=3, note="trl dpo, commit abc")
    assert response.status_code == 201, response.content
    body = response.json()
    version = PolicyVersion.objects.get(number=body["version"]["number"])
    assert (version.method, version.parent, version.run) == (OUTSIDE_METHOD, outside.run.base_version, outside.run)
    assert body["version"] | {"created_at": None} == {
        "number": version.number, "run_id": outside.run.pk, "parent": outside.run.base_version.number,
        "method": "outside", "form": "adapter", "is_head": False, "created_at": None}
    assert body["checked"]["target_modules"] == ["q_proj", "v_proj"] and body["checked"]["forward_checked"]
    assert not version.is_base and version.inputs["note"] == "trl dpo, commit abc"
    # Published as a trained version is: under its number, with the artifact manifest, nothing left beside it.
    folder = Path(version.adapter_dir)
    assert folder == Path(settings.PREFLOOP_ARTIFACT_DIR) / "policies" / f"v{version.number}"
    assert {"adapter_config.json", "adapter_model.safetensors", "prefloop_artifact.json"} <= {
        p.name for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    # Its generation job, run here as a worker would: two answers each, and its first against the parent's.
    job = Job.objects.get(pk=body["job_id"])
    assert job.params["policy_version"] == version.number and job.params["versus"] == [version.parent.number]
    job = services.run_job_now(job)
    assert job.status == Job.Status.SUCCEEDED, job.error
    sources = sorted(Comparison.objects.values_list("source", flat=True))
    assert sources == ["cross_version"] * 3 + ["policy"] * 3
    assert Completion.objects.filter(policy_version=version).count() == 6
    # ...and they are in the labeling queue like any version's.
    served = client.post(f"{PREFIX}/labels/next", **bearer(outside.annotator)).json()["comparison"]
    assert served is not None and Comparison.objects.get(pk=served["id"]).run == outside.run

    # Its place on the progress page, once people judged it against its parent.
    for comparison in Comparison.objects.filter(source="cross_version"):
        labeling.submit_label(people.annotator, LabelInput(comparison.pk, "a"), require_lease=False)
    client.force_login(people.researcher)
    page = client.get(f"/progress/?run={outside.run.pk}").content.decode()
    assert f"v{version.number}" in page and "outside trainer" in page
    for url in (f"/progress/versions/{version.number}/", f"/runs/{outside.run.pk}/"):
        shown = client.get(url)
        assert shown.status_code == 200 and "outside trainer" in shown.content.decode(), url


def test_a_merged_model_upload_samples_from_its_own_folder(client, outside, tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a "trained" model: the base with a sharper output layer
        model.lm_head.weight.mul_(3.0)
    model.save_pretrained(merged)  # weights only: the base's tokenizer is added
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in merged.iterdir():
            zipped.write(path, f"merged/{path.name}")
    response = upload(client, outside, buffer.getvalue(), "merged.zip", form="merged", make_head=True)
    assert response.status_code == 201, response.content
    assert response.json()["version"]["form"] == "merged" and response.json()["version"]["is_head"]
    version = PolicyVersion.objects.get(number=response.json()["version"]["number"])
    assert version.adapter_dir == "" and not version.is_base
    assert (Path(version.base_model_dir) / "tokenizer_config.json").is_file()
    outside.run.refresh_from_db()
    assert outside.run.head == version
    job = services.run_job_now(services.create_generation_job(outside.run, version, 2))
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert Comparison.objects.filter(source="policy").count() == 2  # not "initial": it is not the base


def bad_uploads(base_dir: Path, tmp_path: Path) -> dict[str, tuple[bytes, str, str]]:
    """name → (archive, form, a phrase of the refusal)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    wider.save_pretrained(tmp_path / "wider-model")
    get_peft_model(wider, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "wider")
    garbage = save_adapter(base_dir, tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    pickled = save_adapter(base_dir, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    no_config = save_adapter(base_dir, tmp_path / "no-config")
    (no_config / "adapter_config.json").unlink()
    nan = save_adapter(base_dir, tmp_path / "nan")
    weights = load_file(nan / "adapter_model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, nan / "adapter_model.safetensors")
    retokenized = save_adapter(base_dir, tmp_path / "retokenized")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.add_tokens(["<|new-token|>"])
    tokenizer.save_pretrained(retokenized)
    link = tarfile.TarInfo("adapter/adapter_config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    zip_buffer = io.BytesIO()
    with zipfile.ZipFile(zip_buffer, "w") as zipped:
        zipped.writestr("../../escaped.json", "{}")
    return {
        "wrong shape": (tar_of(tmp_path / "wider"), "adapter", "needs [4, 32]"),
        "merged of another size": (tar_of(tmp_path / "wider-model"), "merged", "hidden_size 48 (the base: 32)"),
        "merged given as adapter": (tar_of(tmp_path / "wider-model"), "adapter", "no adapter_config.json"),
        "garbage weights": (tar_of(garbage), "adapter", "not a readable safetensors file"),
        "not an archive": (random.Random(1).randbytes(2048), "adapter", "not a readable"),
        "pickled weights": (tar_of(pickled), "adapter", "pickled weights are never loaded"),
        "no adapter config": (tar_of(no_config), "adapter", "no adapter_config.json"),
        "NaN weights": (tar_of(nan), "adapter", "logits are not finite"),
        "another tokenizer": (tar_of(retokenized), "adapter", "another vocabulary than the base's"),
        "path traversal": (tar_with([tarfile.TarInfo("../../escaped.json")]), "adapter", "points outside the archive"),
        "absolute path": (tar_with([tarfile.TarInfo("/tmp/escaped.json")]), "adapter", "absolute path"),
        "symlink": (tar_with([link]), "adapter", "is a link"),
        "zip traversal": (zip_buffer.getvalue(), "adapter", "points outside the archive"),
    }


def test_an_upload_that_does_not_load_is_refused_and_leaves_no_version_and_no_files(
        client, outside, tmp_path, settings):
    cases = bad_uploads(Path(outside.run.base_model_dir), tmp_path / "made")
    for name, (data, form, phrase) in cases.items():
        response = upload(client, outside, data, f"{name}.tar", form=form)
        assert response.status_code == 400, (name, response.content)
        assert response.json()["error"].startswith("Nothing was published: ") and phrase in response.json()["error"], (
            name, response.json()["error"])
        assert PolicyVersion.objects.count() == 1, name  # the base only
        assert published_files(settings) == [], (name, published_files(settings))
    assert not (tmp_path / "escaped.json").exists() and not Path("/tmp/escaped.json").exists()


def test_an_upload_over_the_limits_is_refused(client, outside, tmp_path, settings):
    adapter = save_adapter(Path(outside.run.base_model_dir), tmp_path / "trained")
    data = tar_of(adapter, compress=False)
    settings.PREFLOOP_MAX_POLICY_UPLOAD_BYTES = len(data) - 1
    too_large = upload(client, outside, data)
    assert too_large.status_code == 413 and "PREFLOOP_MAX_POLICY_UPLOAD_BYTES" in too_large.json()["error"]
    # A small archive that unpacks past the limit (a zip bomb) is counted as it unpacks.
    settings.PREFLOOP_MAX_POLICY_UPLOAD_BYTES = 100_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("adapter/zeros.safetensors", b"\0" * 1_000_000)
    assert len(buffer.getvalue()) < 100_000
    bomb = upload(client, outside, buffer.getvalue(), "bomb.zip")
    assert bomb.status_code == 400 and "unpacks to more than 100000 bytes" in bomb.json()["error"]
    settings.PREFLOOP_MAX_POLICY_UPLOAD_BYTES = 10 ** 9
    settings.PREFLOOP_MAX_POLICY_UPLOAD_FILES = 3
    many = upload(client, outside, tar_of(adapter))
    assert many.status_code == 400 and "more than 3 files" in many.json()["error"]
    assert PolicyVersion.objects.count() == 1 and published_files(settings) == []


def test_a_parent_outside_the_run_and_an_annotator_token_are_refused(client, outside, tmp_path, settings):
    other = services.create_run("other", outside.run.base_model_dir)
    adapter = tar_of(save_adapter(Path(outside.run.base_model_dir), tmp_path / "trained"))
    response = upload(client, outside, adapter, parent=other.base_version.number)
    assert response.status_code == 400 and "is not a version of run 'outside'" in response.json()["error"]
    refused = upload(client, outside, adapter, key=outside.annotator)
    assert refused.status_code == 403 and "staff" in refused.json()["error"]
    assert PolicyVersion.objects.count() == 2  # the two bases
    assert published_files(settings) == []


def labeled(run, annotator, choice: str = "a", ago: float = 3600.0) -> Label:
    """A label on a fresh comparison of `run`, given `ago` seconds ago."""
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": f"q {random.random()}"}])
    completions = [Completion.objects.create(prompt=prompt, policy_version=run.base_version, text=t)
                   for t in ("left", "right", "third")]
    comparison = labeling.create_comparison(run, prompt, completions[:3 if choice == "ranking" else 2],
                                            source="initial", rng=random.Random(0))
    label, _ = labeling.submit_label(
        annotator, LabelInput(comparison.pk, choice, ranking=[2, 0, 1] if choice == "ranking" else None),
        require_lease=False)
    Label.objects.filter(pk=label.pk).update(created_at=timezone.now() - timedelta(seconds=ago))
    return label


def pull_all(client, outside, since: int = 0, limit: int = 2) -> tuple[list[dict], int]:
    rows = []
    while True:
        page = client.get(f"{PREFIX}/runs/{outside.run.pk}/preferences", {"since": since, "limit": limit},
                          **bearer(outside.staff)).json()
        rows += page["rows"]
        if page["next"] == since:
            return rows, since
        since = page["next"]


def test_labels_are_pulled_by_cursor_each_exactly_once_once_they_can_no_longer_be_undone(
        client, outside, people, django_user_model, settings):
    settings.PREFLOOP_UNDO_SECONDS = 300
    other_run = services.create_run("not-this-one", outside.run.base_model_dir)
    second = django_user_model.objects.create_user("bea")
    old = [labeled(outside.run, who, choice) for who, choice in
           [(people.annotator, "a"), (second, "b"), (people.annotator, "tie"), (second, "ranking"),
            (people.annotator, "b")]]
    labeled(other_run, people.annotator)
    fresh = labeled(outside.run, second, "a", ago=10)  # may still be undone
    later = labeled(outside.run, people.annotator, "a")  # settled, but after one that is not

    rows, cursor = pull_all(client, outside)
    preferring = [label.pk for label in old if label.choice != "tie"]
    assert [row["label_id"] for row in rows] == preferring  # in id order, ties left out, the other run's too
    assert cursor == preferring[-1]
    ranking = next(row for row in rows if row["choice"] == "ranking")
    shown = [c.text for c in Comparison.objects.get(pk=ranking["comparison_id"]).ordered_completions()]
    best, middle, worst = (shown[position] for position in (2, 0, 1))
    assert [(p["chosen"]["messages"][0]["content"], p["rejected"]["messages"][0]["content"])
            for p in ranking["pairs"]] == [(best, middle), (best, worst), (middle, worst)]
    assert rows[0]["pairs"][0]["chosen"]["policy_version"] == outside.run.base_version.number
    page = client.get(f"{PREFIX}/runs/{outside.run.pk}/preferences", {"since": cursor},
                      **bearer(outside.staff)).json()
    assert page == {"rows": [], "next": cursor, "unsettled": 1}  # `later` waits behind `fresh`

    Label.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - timedelta(seconds=301))
    rest, cursor = pull_all(client, outside, since=cursor)
    assert [row["label_id"] for row in rest] == [fresh.pk, later.pk]
    assert pull_all(client, outside, since=cursor) == ([], later.pk)
    every = [row["label_id"] for row in rows + rest]
    assert len(every) == len(set(every))


def test_the_latest_reward_model_downloads_as_a_tar(client, outside, tmp_path):
    from tests.conftest import save_tiny_reward_model

    missing = client.get(f"{PREFIX}/runs/{outside.run.pk}/reward-model", **bearer(outside.staff))
    assert missing.status_code == 404 and "no reward model yet" in missing.json()["error"]
    weights = save_tiny_reward_model(Path(outside.run.base_model_dir), tmp_path / "rm")
    for number in (1, 2):
        RewardModelVersion.objects.create(number=number, run=outside.run, base_model_dir=outside.run.base_model_dir,
                                          weights_dir=str(weights), label_count=4, reward_mean=0.5, reward_std=2.0)
    response = client.get(f"{PREFIX}/runs/{outside.run.pk}/reward-model", **bearer(outside.staff))
    assert response.status_code == 200 and response["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content))) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("prefloop-r2/prefloop_export.json"))
    assert "prefloop-r2/config.json" in names and manifest["version"] == 2
    first = client.get(f"{PREFIX}/runs/{outside.run.pk}/reward-model", {"version": 1}, **bearer(outside.staff))
    assert first.status_code == 200 and first["Content-Disposition"] == 'attachment; filename="prefloop-r1.tar"'
