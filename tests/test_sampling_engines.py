"""Fast sampling and 4-bit frozen weights on a GPU box (issue 27 item 4): the run settings
`sampling_engine` (transformers | vllm) and `frozen_quantization` (none | nf4) are
refused with a clear message wherever their packages are missing — on the settings page,
on the API, and by a job pinned to them before it loads anything — never silently
ignored; where they apply, TRL's trainers get arguments they accept, and the memory plan
counts what vLLM reserves and what 4-bit weights save. What runs them is
scripts/device_check.sh, on the GPU machine."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from labeling import services as labeling
from labeling.services import LabelInput
from tests.test_runs import current_values
from training import services
from training.ml import engines, memory_plan, quantization
from training.ml.methods import method_named
from training.models import Job, PolicyVersion, Run

VLLM_MISSING = importlib.util.find_spec("vllm") is None
BNB_MISSING = importlib.util.find_spec("bitsandbytes") is None
needs_no_vllm = pytest.mark.skipif(not VLLM_MISSING, reason="vllm is installed here: nothing to refuse")
needs_no_bnb = pytest.mark.skipif(not BNB_MISSING, reason="bitsandbytes is installed here: nothing to refuse")


@needs_no_vllm
@pytest.mark.django_db
def test_the_settings_page_refuses_vllm_where_it_is_not_installed_and_saves_nothing(client, people, base_run):
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    assert '<select name="sampling_engine"' in page and '<select name="frozen_quantization"' in page
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, sampling_engine="vllm",
                                                                 update_prompts=7))
    assert refused.status_code == 400
    body = refused.content.decode()
    assert "sampling engine &#x27;vllm&#x27; needs the vllm package, which is not importable" in body
    assert "choose &#x27;transformers&#x27;" in body
    base_run.refresh_from_db()
    assert (base_run.sampling_engine, base_run.update_prompts) == ("transformers", 64)  # nothing saved


@needs_no_bnb
@pytest.mark.django_db
def test_the_settings_page_refuses_4bit_where_bitsandbytes_is_missing(client, people, base_run):
    client.force_login(people.researcher)
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, frozen_quantization="nf4"))
    assert refused.status_code == 400
    assert "frozen_quantization &#x27;nf4&#x27; needs the bitsandbytes package" in refused.content.decode()
    base_run.refresh_from_db()
    assert base_run.frozen_quantization == "none"
    with pytest.raises(services.RunError, match="needs the bitsandbytes package"):
        services.update_run_settings(base_run, services.RunSettings(
            **{**services.settings_of(base_run).__dict__, "frozen_quantization": "nf4"}))


@needs_no_vllm
@pytest.mark.django_db
def test_the_api_refuses_vllm_and_an_unknown_engine(client, people, tiny_model_dir):
    from api.services import create_token

    _, key = create_token(people.researcher, "script")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    refused = client.post("/api/v1/runs", {"name": "fast", "base_model_dir": str(tiny_model_dir), "method": "grpo",
                                           "sampling_engine": "vllm"}, content_type="application/json", **headers)
    assert refused.status_code == 400
    assert "needs the vllm package" in refused.json()["error"]
    unknown = client.post("/api/v1/runs", {"name": "fast", "base_model_dir": str(tiny_model_dir),
                                           "sampling_engine": "tgi"}, content_type="application/json", **headers)
    assert unknown.status_code == 422
    assert not Run.objects.filter(name="fast").exists()


@pytest.mark.django_db
def test_a_new_run_takes_the_deployments_engine_and_every_job_pins_it(base_run, settings, tmp_path):
    settings.PREFLOOP_SAMPLING_ENGINE = "transformers"
    run = services.create_run("plain", str(tmp_path))
    assert (run.sampling_engine, run.frozen_quantization) == ("transformers", "none")
    base_run.sampling_engine, base_run.frozen_quantization = "vllm", "nf4"  # as saved where both were installed
    base_run.save()
    jobs = [services.create_generation_job(base_run, base_run.base_version, 1),
            services.create_evaluation_job(base_run)]
    assert [(job.sampling_engine, job.frozen_quantization) for job in jobs] == [("vllm", "nf4")] * 2
    old = Job.objects.create(kind=Job.Kind.GENERATE, run=base_run, params={})
    assert (old.sampling_engine, old.frozen_quantization) == ("transformers", "none")


@pytest.fixture
def dpo_run(tiny_base, base_run, people, make_comparison, settings, tmp_path):
    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    base_run.method, base_run.method_config, base_run.recipe = "dpo", {"batch_size": 2}, "direct"
    base_run.save()
    labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    return base_run


@pytest.mark.skipif(not (VLLM_MISSING and BNB_MISSING), reason="vllm or bitsandbytes is installed here")
@pytest.mark.parametrize(("setting", "value", "message"), [
    ("sampling_engine", "vllm", "EngineUnavailable: sampling engine 'vllm' needs the vllm package"),
    ("frozen_quantization", "nf4", "QuantizationUnavailable: frozen_quantization 'nf4' needs the bitsandbytes"),
])
@pytest.mark.django_db
def test_a_job_pinned_to_a_missing_package_fails_before_it_loads_anything(dpo_run, monkeypatch, setting, value,
                                                                          message):
    setattr(dpo_run, setting, value)  # saved where the package was installed, run where it is not
    judge = None
    if setting == "sampling_engine":  # DPO never samples, so any engine does for it: GRPO samples
        from training.models import RewardModelVersion

        dpo_run.method, dpo_run.method_config, dpo_run.recipe = "grpo", {}, "rlhf"
        judge = RewardModelVersion.objects.create(number=1, run=dpo_run, base_model_dir=dpo_run.base_model_dir,
                                                  weights_dir="/never/loaded", label_count=1)
    dpo_run.save()
    loaded = []
    monkeypatch.setattr("training.ml.methods.base.trainable_policy", lambda *a, **k: loaded.append(a))
    job = services.run_job_now(services.create_policy_update_job(dpo_run, dpo_run.base_version, judge))
    assert job.status == Job.Status.FAILED
    assert job.error.startswith(message), job.error
    assert not loaded and not PolicyVersion.objects.filter(parent=dpo_run.base_version).exists()


@needs_no_vllm
@pytest.mark.django_db
def test_a_generation_job_pinned_to_vllm_fails_with_the_reason(tiny_base, base_run):
    base_run.sampling_engine = "vllm"
    base_run.save()
    from labeling.models import Comparison, Prompt

    Prompt.objects.create(messages=[{"role": "user", "content": "Say something."}])
    job = services.run_job_now(services.create_generation_job(base_run, base_run.base_version, 2))
    assert job.status == Job.Status.FAILED
    assert "sampling engine 'vllm' needs the vllm package" in job.error
    assert not Comparison.objects.exists()


def test_an_engine_whose_package_is_here_still_needs_a_cuda_device():
    # The CUDA rule, with a package every Python has standing in for vllm.
    engine = engines.SamplingEngine("stand-in", "needs CUDA", package="json", needs_cuda=True)
    assert engine.refusal() is None  # what a web process can tell: installed
    assert "samples on a CUDA GPU and this worker has none" in engine.refusal(torch.device("cpu"))
    assert engine.refusal(torch.device("cuda")) is None
    assert engines.setting_refusal("tgi") == "sampling engine must be one of transformers, vllm, not 'tgi'"
    assert quantization.setting_refusal("int3").startswith("frozen_quantization must be one of none, nf4")
    assert engines.require_engine("transformers", torch.device("cpu")).name == "transformers"


@pytest.mark.parametrize("trl_config", [
    "trl.GRPOConfig", "trl.RLOOConfig", "trl.experimental.online_dpo.OnlineDPOConfig",
])
def test_trls_sampling_trainers_accept_the_vllm_colocate_arguments(trl_config, tmp_path):
    import importlib

    module, _, name = trl_config.rpartition(".")
    config_class = getattr(importlib.import_module(module), name)
    arguments = engines.trl_rollout_arguments("vllm", 0.4)
    config = config_class(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, **arguments)
    assert (config.use_vllm, config.vllm_mode, config.vllm_gpu_memory_utilization) == (True, "colocate", 0.4)
    assert engines.trl_rollout_arguments("transformers") == {}


def test_the_memory_plan_counts_the_vllm_reservation_and_4bit_weights():
    shape = memory_plan.known_shape("llama-3.1-8b")
    grpo = method_named("grpo").config()
    plain = memory_plan.plan_for_method(shape, "grpo", grpo, 128)
    colocated = memory_plan.plan_for_method(shape, "grpo", grpo, 128, vllm_bytes=24 * memory_plan.GIB)
    assert "KV cache (sampling)" in plain.parts and "KV cache (sampling)" not in colocated.parts
    assert colocated.parts["vLLM engine"] == 24 * memory_plan.GIB
    # PPO samples with transformers whatever the engine: no reservation is planned for it.
    ppo = memory_plan.plan_for_method(shape, "ppo", method_named("ppo").config(), 128, vllm_bytes=24 * 2**30)
    assert "vLLM engine" not in ppo.parts

    nf4 = memory_plan.plan_for_method(shape, "grpo", grpo, 128, quantization="nf4")
    # 8B in bf16: 16 GB of weights; in 4 bits the linear layers shrink ~4x, the embedding
    # and the LM head (2 x 0.53B parameters) stay unquantized, in fp32 once peft prepares
    # the base for training (prepare_model_for_kbit_training).
    assert plain.parts["policy weights"] == shape.parameters * 2
    linear = shape.parameters - 2 * shape.vocab_size * shape.hidden_size
    expected = int(linear * quantization.BYTES_PER_4BIT_WEIGHT) + 2 * shape.vocab_size * shape.hidden_size * 4
    assert nf4.parts["policy weights"] == expected
    assert 0.45 < nf4.parts["policy weights"] / plain.parts["policy weights"] < 0.52
    # Best-of-N samples with the policy unquantized: its sampling phase holds the whole of it.
    best = memory_plan.plan_for_method(shape, "best_of_n", method_named("best_of_n").config(), 128,
                                       quantization="nf4", gradient_checkpointing=True)
    sampling = best.parts.get("unquantized policy (sampling)", best.apart.get("unquantized policy (sampling)"))
    assert sampling + nf4.parts["policy weights"] == plain.parts["policy weights"]
    assert 0.25 < nf4.parts["reward model"] / plain.parts["reward model"] < 0.35  # its embedding stays bf16
    assert nf4.parts["activations"] == plain.parts["activations"]  # compute stays in bf16
    assert "frozen_quantization to nf4" in plain.advice["policy weights"]


def test_the_run_fields_choices_are_the_registries():
    assert list(Run.SamplingEngine.values) == list(engines.ENGINES)
    assert tuple(Run.FrozenQuantization.values) == quantization.FROZEN_QUANTIZATIONS


def test_a_method_that_never_samples_needs_no_sampling_engine():
    from training.services.memory import samples_through_engine

    assert [name for name in ("ppo", "grpo", "rloo", "online_dpo", "dpo", "sft_chosen", "best_of_n")
            if samples_through_engine(name, method_named(name).config())] == ["grpo", "rloo", "online_dpo",
                                                                             "best_of_n"]


def test_vllm_lora_ranks_round_up_to_the_ranks_vllm_serves():
    from training.ml.vllm_sampling import vllm_lora_rank

    assert [vllm_lora_rank(r) for r in (1, 8, 12, 16, 48, 300, 512)] == [8, 8, 16, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="at most 512"):
        vllm_lora_rank(513)


def test_ppo_refuses_a_trained_value_model_copy_of_a_4bit_reward_model(tmp_path):
    from training.ml.loading import PolicyStart
    from training.ml.methods import TrainingInputs
    from training.ml.reward_scoring import RewardModelRef

    ppo = method_named("ppo")
    never = tmp_path / "never-loaded"
    inputs = TrainingInputs(PolicyStart(never), prompts=[[{"role": "user", "content": "Hi"}]],
                            reward_model=RewardModelRef(never, never, quantization="nf4"), frozen_quantization="nf4")
    with pytest.raises(ValueError, match="value_model 'lora' trains a copy of the reward model"):
        ppo.train(inputs, tmp_path / "out", ppo.config({"value_model": "lora"}))


def test_a_launched_job_carries_the_engine_and_quantization_to_its_processes(tmp_path):
    from training.ml.launch import method_payload
    from training.ml.loading import PolicyStart
    from training.ml.methods import TrainingInputs
    from training.ml.reward_scoring import RewardModelRef

    grpo = method_named("grpo")
    inputs = TrainingInputs(PolicyStart(tmp_path), reward_model=RewardModelRef(tmp_path, tmp_path, quantization="nf4"),
                            sampling_engine="vllm", frozen_quantization="nf4", vllm_gpu_memory_utilization=0.5)
    payload = method_payload(grpo, inputs, tmp_path / "out", grpo.config())
    assert (payload["sampling_engine"], payload["frozen_quantization"], payload["vllm_gpu_memory_utilization"],
            payload["reward_model"]["quantization"]) == ("vllm", "nf4", 0.5, "nf4")
