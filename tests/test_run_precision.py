"""The run's precision setting in the app: a new run takes the deployment's, the
settings page and the API change it, every kind of job pins it when it is created, and
a job pinned before the setting existed runs in "auto"."""

from __future__ import annotations

import pytest

from labeling.models import Prompt
from tests.test_runs import current_values
from training import services
from training.models import Job, RewardModelVersion, Run
from training.services import policy_updates

pytestmark = pytest.mark.django_db


def test_a_new_run_takes_the_deployments_precision(settings, tmp_path):
    settings.PREFLOOP_PRECISION = "fp32"
    assert services.create_run("exact", str(tmp_path)).precision == "fp32"
    settings.PREFLOOP_PRECISION = "auto"
    assert services.create_run("default precision", str(tmp_path)).precision == "auto"


def test_the_settings_page_changes_the_precision_and_refuses_an_unknown_one(client, people, base_run):
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    assert '<select name="precision"' in page and "LoRA adapters train in fp32" in page
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, precision="int4"))
    assert refused.status_code == 400
    saved = client.post(f"/runs/{base_run.pk}/", current_values(base_run, precision="bf16",
                                                                 gradient_checkpointing="off"))
    assert saved.status_code == 302
    base_run.refresh_from_db()
    assert (base_run.precision, base_run.gradient_checkpointing) == ("bf16", "off")
    with pytest.raises(services.RunError, match="precision must be one of auto, bf16, fp16, fp32"):
        services.update_run_settings(base_run, services.RunSettings(
            **{**services.settings_of(base_run).__dict__, "precision": "half"}))


def test_every_job_pins_its_runs_precision_and_an_old_job_runs_in_auto(base_run):
    base_run.precision, base_run.gradient_checkpointing = "bf16", "on"
    base_run.save()
    for index in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"question {index}"}])
    judge = RewardModelVersion.objects.create(number=1, run=base_run, base_model_dir=base_run.base_model_dir,
                                              weights_dir="/rm/v1", label_count=1)
    jobs = [
        services.create_policy_update_job(base_run, base_run.base_version, judge),
        services.create_generation_job(base_run, base_run.base_version, 2),
        services.create_evaluation_job(base_run),
        services.create_reward_training_job(base_run),
    ]
    base_run.precision = "fp32"  # changed after: queued jobs keep theirs
    base_run.save()
    assert [Job.objects.get(pk=job.pk).precision for job in jobs] == ["bf16"] * 4
    inputs = policy_updates.training_inputs(jobs[0])
    assert (inputs.precision, inputs.gradient_checkpointing) == ("bf16", "on")

    old = Job.objects.create(kind=Job.Kind.EVALUATE, run=base_run, params={"sampling": {}})
    assert old.precision == "auto"
    jobs[0].params = {key: value for key, value in jobs[0].params.items()
                      if key not in ("precision", "gradient_checkpointing")}  # as pinned before both existed
    inputs = policy_updates.training_inputs(jobs[0])
    assert (inputs.precision, inputs.gradient_checkpointing) == ("auto", "auto")


def test_a_migrated_run_is_in_auto():
    assert Run._meta.get_field("precision").default == "auto"
