"""A run's method and recipe agree by default: a method that reads no reward model (DPO,
SFT on chosen) gets the `direct` recipe, on creation and when the settings form switches
to it, and such a run trains no reward model by itself."""

from __future__ import annotations

import pytest

from labeling import services as labeling
from labeling.services import LabelInput
from tests.test_runs import current_values
from training import services
from training.ml.methods import METHODS, REWARD_MODEL
from training.models import Job, Run
from training.recipes import default_recipe_for
from training.services.runs import method_defaults

pytestmark = pytest.mark.django_db


def test_each_method_defaults_to_the_recipe_that_fits_what_it_reads():
    assert {name: default_recipe_for(name) for name in ("dpo", "sft_chosen", "ppo", "grpo")} == {
        "dpo": "direct", "sft_chosen": "direct", "ppo": "rlhf", "grpo": "rlhf"}
    for method in METHODS.values():
        expected = "rlhf" if REWARD_MODEL in method.needs else "direct"
        assert services.default_settings(method.name)["recipe"] == expected, method.name


def test_a_dpo_run_made_on_the_page_gets_the_direct_recipe(client, people, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    client.force_login(people.researcher)
    for name, method in (("dpo run", "dpo"), ("sft run", "sft_chosen"), ("ppo run", "ppo")):
        client.post("/runs/new", {"name": name, "base_model_dir": str(model_dir), "method": method})
    assert dict(Run.objects.values_list("name", "recipe")) == {"dpo run": "direct", "sft run": "direct",
                                                               "ppo run": "rlhf"}


def test_switching_the_method_switches_the_recipe_with_a_message(client, people, base_run):
    client.force_login(people.researcher)
    assert (base_run.method, base_run.recipe) == ("ppo", "rlhf")
    switched = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="dpo"), follow=True)
    base_run.refresh_from_db()
    assert (base_run.method, base_run.recipe) == ("dpo", "direct")
    assert "The recipe is now Update, then ask, which fits the new method." in switched.content.decode()

    back = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="ppo"), follow=True)
    base_run.refresh_from_db()
    assert (base_run.method, base_run.recipe) == ("ppo", "rlhf")
    assert "The recipe is now RLHF" in back.content.decode()

    # A recipe picked in the same submit is the researcher's choice, and kept.
    chosen = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="dpo", recipe="offline"),
                         follow=True)
    base_run.refresh_from_db()
    assert (base_run.method, base_run.recipe) == ("dpo", "offline")
    assert "The recipe is now" not in chosen.content.decode()
    # Other settings saved without a method change leave the recipe alone.
    client.post(f"/runs/{base_run.pk}/", current_values(base_run, update_prompts="12"))
    base_run.refresh_from_db()
    assert (base_run.recipe, base_run.update_prompts) == ("offline", 12)


@pytest.mark.parametrize(("method", "recipe", "trains"), [
    ("dpo", "direct", False), ("sft_chosen", "offline", False),
    ("dpo", "rlhf", True),  # its rounds train one
    ("ppo", "direct", True),  # its method reads one
])
def test_automatic_reward_model_training_follows_what_the_run_needs(method, recipe, trains, people,
                                                                     make_comparison, base_run,
                                                                     django_capture_on_commit_callbacks):
    base_run.method, base_run.recipe = method, recipe
    base_run.method_config = method_defaults(method)
    base_run.reward_auto_train_labels = 2
    base_run.save()
    assert base_run.needs_reward_model is trains
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            labeling.submit_label(people.annotator, LabelInput(make_comparison().pk, "a"), require_lease=False)
    assert Job.objects.filter(kind=Job.Kind.TRAIN_REWARD, run=base_run).exists() is trains
    assert services.maybe_request_reward_training(base_run) is None or trains


def test_the_run_page_says_when_nothing_trains_a_reward_model_by_itself(client, people, base_run):
    client.force_login(people.researcher)
    assert 'id="no-reward-model-needed"' not in client.get(f"/runs/{base_run.pk}/").content.decode()
    base_run.method, base_run.recipe, base_run.method_config = "dpo", "direct", method_defaults("dpo")
    base_run.save()
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    assert 'id="no-reward-model-needed"' in page and "none is trained by itself" in page
