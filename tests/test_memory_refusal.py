"""A job that cannot fit its device fails before it loads anything, saying what to change."""

from __future__ import annotations

import pytest
import torch

from labeling import services as labeling
from labeling.services import LabelInput
from training import services
from training.ml.memory_plan import GIB
from training.models import Job, PolicyVersion
from training.services import memory

pytestmark = pytest.mark.django_db


@pytest.fixture
def sft_run(tiny_base, base_run, people, make_comparison, settings, tmp_path):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    base_run.method, base_run.method_config, base_run.recipe = "sft_chosen", {"batch_size": 4096}, "direct"
    base_run.save()
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    return base_run


def test_a_policy_update_that_cannot_fit_is_refused_with_the_setting_to_change(sft_run, monkeypatch):
    # Planned for a 16 GiB GPU in bf16 (what the run pins), without one being here.
    sft_run.precision, sft_run.gradient_checkpointing = "bf16", "off"
    sft_run.save()
    monkeypatch.setattr(memory, "this_device", lambda: (torch.device("cuda"), 16 * GIB))
    loaded = []
    monkeypatch.setattr("training.ml.methods.base.trainable_policy", lambda *a, **k: loaded.append(a))
    job = services.run_job_now(services.create_policy_update_job(sft_run, sft_run.base_version, None))
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("JobTooLarge: this job needs about ")
    # The tiny model's vocabulary is SmolLM2's: at 4096 answers a step, the logits outweigh the rest.
    assert "the device has 16.0 GiB; its largest part is logits" in job.error
    assert job.error.endswith("lower the batch size or the answer length")
    assert not loaded and not PolicyVersion.objects.filter(parent=sft_run.base_version).exists()


def test_the_same_update_fits_a_device_large_enough(sft_run, monkeypatch):
    monkeypatch.setattr(memory, "this_device", lambda: (torch.device("cpu"), 4096 * GIB))
    sft_run.method_config = {"batch_size": 4}
    sft_run.save()
    job = services.run_job_now(services.create_policy_update_job(sft_run, sft_run.base_version, None))
    assert job.status == Job.Status.SUCCEEDED, job.error


def test_cpu_processes_of_one_launch_share_the_machine(monkeypatch):
    plan = memory.MemoryPlan({"policy weights": 3 * GIB}, {"policy weights": "choose bf16 precision"})
    memory.check_fits(plan, 4 * GIB)
    with pytest.raises(memory.JobTooLarge, match=r"about 6.0 GiB .* \(2 processes share this machine's memory\)"):
        memory.check_fits(plan, 4 * GIB, processes_sharing=2)


def test_the_run_page_shows_whether_an_update_fits(client, people, tiny_run):
    client.force_login(people.researcher)
    page = client.get(f"/runs/{tiny_run.pk}/").content.decode()
    assert "Will a policy update fit?" in page
    table = page[page.index('id="memory-plan"'):page.index("</table>", page.index('id="memory-plan"'))]
    assert table.count("<tr>") == 5 and "CUDA, 24 GB" in table and "this machine&#x27;s CPU" in table
    assert "yes" in table  # the tiny model fits anything
    # auto: bf16 with checkpointing on the GPUs, fp32 without it on the CPU.
    assert table.count("<td>bf16</td><td>on</td>") == 3 and "<td>fp32</td><td>off</td>" in table


def test_a_model_the_page_cannot_size_shows_no_plan(client, people, tiny_run, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    tiny_run.base_model_dir = str(tmp_path)
    tiny_run.save()
    assert services.planned_peaks(tiny_run) == []
    client.force_login(people.researcher)
    assert "Will a policy update fit?" not in client.get(f"/runs/{tiny_run.pk}/").content.decode()


def test_a_reward_model_that_cannot_fit_is_refused_before_it_trains(tiny_base, base_run, people, make_comparison,
                                                                     settings, tmp_path, monkeypatch):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    base_run.reward_config.update(batch_size=4096, max_length=512)
    base_run.precision = "bf16"
    base_run.save()
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    monkeypatch.setattr(memory, "this_device", lambda: (torch.device("cuda"), 16 * GIB))
    job = services.run_job_now(services.create_reward_training_job(base_run))
    assert job.status == Job.Status.FAILED
    assert "its largest part is activations" in job.error
    assert job.error.endswith("lower the reward model's batch_size or max_length")
    assert not base_run.reward_models.exists()
