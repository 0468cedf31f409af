"""Settings are checked before they are saved: every config field has a declared range
or check (training/ml/configs.py `bounded`), the form and the API both read it, every
problem of one submit comes back at once next to its field, the rules joining fields
land on a field, and nothing is saved when anything is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.designs import parse_design
from experiments.services import arm_run_settings
from tests.test_runs import current_values
from training import services
from training.forms import METHOD_PREFIX, REWARD_PREFIX, RunSettingsForm
from training.ml.configs import ConfigErrors, config_from_dict, field_specs
from training.ml.methods import METHODS, method_named
from training.ml.reward_training import RewardTrainingConfig
from training.models import Run
from training.services.runs import method_defaults, reward_defaults

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
NONSENSE = {  # form field: (value, what its error says)
    "method__learning_rate": ("1e9", "learning_rate must be at most 0.01"),
    "reward__heldout_fraction": ("1.5", "heldout_fraction must be below 1"),
    "reward__lora_targets": ("banana", "no linear layer is called 'banana'"),
    "method__response_length": ("100000", "response_length must be at most 4096"),
}


def api_key(people) -> dict:
    from api.services import create_token

    return {"HTTP_AUTHORIZATION": f"Bearer {create_token(people.researcher, 'notebook')[1]}"}


def stored(run: Run) -> services.RunSettings:
    run.refresh_from_db()
    return services.settings_of(run)


@pytest.mark.parametrize("field", NONSENSE)
def test_the_form_refuses_each_nonsense_value_next_to_its_field_and_saves_nothing(client, people, base_run, field):
    client.force_login(people.researcher)
    before = stored(base_run)
    value, message = NONSENSE[field]
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, **{field: value}))
    assert refused.status_code == 400 and "Settings not saved" in refused.content.decode()
    errors = refused.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]
    assert stored(base_run) == before


def test_every_problem_of_one_submit_is_shown_at_once(client, people, base_run):
    client.force_login(people.researcher)
    before = stored(base_run)
    changes = {field: value for field, (value, _) in NONSENSE.items()}
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, **changes, update_prompts="0",
                                                                   method__temperature="0"))
    errors = refused.context["form"].errors
    assert set(errors) == {*NONSENSE, "update_prompts", "method__temperature"}
    assert "update_prompts must be at least 1" in errors["update_prompts"][0]
    assert "temperature must be above 0" in errors["method__temperature"][0]
    page = refused.content.decode()
    assert all(message in page.replace("&#x27;", "'") for _, message in NONSENSE.values())
    assert stored(base_run) == before


def test_a_run_saved_with_nonsense_before_the_ranges_shows_its_page_and_must_be_corrected(client, people,
                                                                                         base_run):
    base_run.method_config = {**base_run.method_config, "learning_rate": 1e9}
    base_run.save()
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/")
    assert page.status_code == 200 and 'value="1000000000.0"' in page.content.decode()
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run))
    assert list(refused.context["form"].errors) == ["method__learning_rate"]
    assert client.post(f"/runs/{base_run.pk}/", current_values(base_run, method__learning_rate="1e-4")
                       ).status_code == 302
    assert stored(base_run).method_config["learning_rate"] == 1e-4


def test_the_inputs_show_the_ranges_the_dataclasses_declare(client, people, base_run):
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    assert 'name="method__learning_rate"' in page and 'max="0.01"' in page
    assert 'name="update_prompts" min="1" max="100000"' in page.replace(' value="64"', "")
    # One place: each numeric input's min/max is its config field's declared bounds.
    form = RunSettingsForm(base_run)
    checked = 0
    for prefix, config_class in ((METHOD_PREFIX, METHODS["ppo"].config_class), (REWARD_PREFIX, RewardTrainingConfig)):
        for spec in field_specs(config_class):
            if prefix + spec.name in form.fields and spec.kind in (int, float):
                attrs = form.fields[prefix + spec.name].widget.attrs
                assert (attrs.get("min"), attrs.get("max")) == (spec.bounds.low, spec.bounds.high), spec.name
                assert spec.bounds.low is not None and spec.bounds.high is not None, spec.name
                checked += 1
    assert checked >= 20


def test_a_rule_joining_two_fields_lands_on_its_field(client, people, base_run):
    base_run.method, base_run.method_config = "grpo", method_defaults("grpo")
    base_run.save()
    client.force_login(people.researcher)
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method__batch_size="6"))
    errors = refused.context["form"].errors
    assert list(errors) == ["method__batch_size"]
    assert "multiple of num_generations (4)" in errors["method__batch_size"][0]
    assert stored(base_run).method_config["batch_size"] == 8


def test_a_method_that_reads_no_reward_model_with_a_recipe_training_one_nobody_reads_is_refused(client, people,
                                                                                              base_run):
    client.force_login(people.researcher)
    # On direct, so that rlhf is picked, not left as it was (a recipe left as it was
    # switches to the new method's own: tests/test_method_recipe_defaults.py).
    base_run.recipe = "direct"
    base_run.save()
    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="dpo", recipe="rlhf",
                                                                   query_selection="random"))
    errors = refused.context["form"].errors
    assert list(errors) == ["recipe"]
    assert "rlhf recipe trains a reward model" in errors["recipe"][0] and "dpo" in errors["recipe"][0]
    assert stored(base_run).method == "ppo"
    # The queue's disagreement reads the reward model: then the rlhf recipe is worth its training.
    assert client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="dpo", recipe="rlhf",
                                                               query_selection="disagreement")).status_code == 302
    base_run.refresh_from_db()
    assert client.post(f"/runs/{base_run.pk}/", current_values(base_run, recipe="direct",
                                                               query_selection="random")).status_code == 302
    assert (stored(base_run).method, stored(base_run).recipe) == ("dpo", "direct")


def test_the_api_reads_and_changes_settings_with_the_same_checks(client, people, base_run):
    headers = api_key(people)
    url = f"/api/v1/runs/{base_run.pk}/settings"
    read = client.get(url, **headers).json()
    assert read["method"] == "ppo" and read["method_config"] == base_run.method_config
    assert read["reward_config"]["heldout_fraction"] == 0.1 and read["update_prompts"] == base_run.update_prompts
    before = stored(base_run)

    def patch(body):
        return client.patch(url, body, content_type="application/json", **headers)

    for body, key, message in [
        ({"method_config": {"learning_rate": 1e9}}, "method.learning_rate", "at most 0.01"),
        ({"reward_config": {"heldout_fraction": 1.5}}, "reward.heldout_fraction", "below 1"),
        ({"reward_config": {"lora_targets": "banana"}}, "reward.lora_targets", "no linear layer"),
        ({"method_config": {"response_length": 100000}}, "method.response_length", "at most 4096"),
        ({"method_config": {"lerning_rate": 1e-4}}, "method.lerning_rate", "unknown setting"),
        ({"update_prompts": 0}, "update_prompts", "at least 1"),
    ]:
        refused = patch(body)
        assert refused.status_code == 400 and list(refused.json()["fields"]) == [key], body
        assert message in refused.json()["fields"][key] and "settings not saved" in refused.json()["error"]
    everything = patch({"method_config": {"learning_rate": 1e9, "response_length": 100000},
                        "reward_config": {"heldout_fraction": 1.5, "lora_targets": "banana"}, "update_prompts": 0})
    assert set(everything.json()["fields"]) == {"method.learning_rate", "method.response_length",
                                                "reward.heldout_fraction", "reward.lora_targets", "update_prompts"}
    cross = patch({"method": "dpo", "query_selection": "random"})
    assert list(cross.json()["fields"]) == ["recipe"] and "dpo" in cross.json()["fields"]["recipe"]
    assert patch({"precision": "half"}).status_code == 422  # the body's shape, as everywhere
    assert stored(base_run) == before

    saved = patch({"method_config": {"learning_rate": 1e-4}, "reward_config": {"lora_targets": "q_proj, v_proj"},
                   "comparison_prompts": 4})
    assert saved.status_code == 200, saved.content
    assert saved.json()["method_config"]["learning_rate"] == 1e-4
    after = stored(base_run)
    assert (after.method_config["learning_rate"], after.reward_config["lora_targets"],
            after.comparison_prompts) == (1e-4, "q_proj, v_proj", 4)
    assert after.method_config["kl_coef"] == before.method_config["kl_coef"]  # fields not named keep theirs
    switched = patch({"method": "grpo", "method_config": {"num_generations": 2}})
    assert switched.status_code == 200 and switched.json()["method_config"] == {
        **method_defaults("grpo"), "num_generations": 2}
    assert client.get("/api/v1/runs/999999/settings", **headers).status_code == 404


def test_creating_a_run_through_the_api_checks_its_configs(client, people, tiny_model_dir):
    body = {"name": "typo", "base_model_dir": str(tiny_model_dir), "method": "ppo",
            "method_config": {"learning_rate": 1e9}, "reward_config": {"heldout_fraction": 1.5}}
    refused = client.post("/api/v1/runs", body, content_type="application/json", **api_key(people))
    assert refused.status_code == 400
    assert set(refused.json()["fields"]) == {"method.learning_rate", "reward.heldout_fraction"}
    assert not Run.objects.filter(name="typo").exists()
    made = client.post("/api/v1/runs", {**body, "method_config": {"learning_rate": 2e-4}, "reward_config": {}},
                       content_type="application/json", **api_key(people))
    assert made.status_code == 201 and Run.objects.get(name="typo").method_config["learning_rate"] == 2e-4


def test_every_problem_of_a_config_is_reported_with_its_field():
    with pytest.raises(ConfigErrors) as raised:
        config_from_dict(RewardTrainingConfig, {"lora_targets": "banana", "heldout_fraction": 1.5, "epochs": 0,
                                                "batch_size": "many"})
    assert {error.field for error in raised.value.errors} == {"lora_targets", "heldout_fraction", "epochs",
                                                              "batch_size"}
    assert config_from_dict(RewardTrainingConfig, {"lora_targets": "all-linear"}).lora_targets == "all-linear"
    for accepted in ("q_proj,k_proj,v_proj,o_proj", "self_attn.q_proj, mlp.down_proj", "c_attn"):
        assert config_from_dict(RewardTrainingConfig, {"lora_targets": accepted}).lora_targets == accepted
    with pytest.raises(ConfigErrors, match="no linear layer is called 'banana', 'mlp.banana'"):
        config_from_dict(RewardTrainingConfig, {"lora_targets": "q_proj,banana,mlp.banana"})


@pytest.mark.parametrize("name", list(METHODS))
def test_every_default_and_every_published_design_is_within_the_ranges(name):
    method_named(name).config(method_defaults(name))  # the deployment's defaults
    config_from_dict(RewardTrainingConfig, reward_defaults())
    for design_file in sorted((ROOT / "docs" / "experiments").glob("*.toml")):
        design = parse_design(design_file.read_text(), base_dir=design_file.parent)
        for arm in design.arms():
            arm_run_settings(arm)  # raises SettingsRefused for a value out of range
