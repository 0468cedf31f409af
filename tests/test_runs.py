"""Runs as lineages: two runs keep their labels, versions and reward models apart; a
branch starts from its version's adapter with its parent's labels up to the branch
point; a run's settings are edited on its page and checked by the config dataclasses."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from labeling import services as labeling
from labeling.models import Comparison, Completion, Prompt
from labeling.services import LabelInput, create_comparison
from training import services
from training.forms import RunSettingsForm
from training.games import version_games
from training.models import Job, PolicyVersion, RewardModelVersion, Run
from training.services.policy_updates import training_inputs
from training.services.reward_models import preference_labels, preference_pairs
from training.services.runs import method_defaults

pytestmark = pytest.mark.django_db


def comparison_in(run: Run, texts=("left answer", "right answer")):
    question = f"a question for {run.name} {random.random()}"
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": question}])
    completions = [Completion.objects.create(prompt=prompt, policy_version=run.head, text=t) for t in texts]
    return create_comparison(run, prompt, completions, source="initial", rng=random.Random(0))


def label(person, comparison, choice="a"):
    return labeling.submit_label(person, LabelInput(comparison.pk, choice), require_lease=False)[0]


def reward_model(run: Run, number: int) -> RewardModelVersion:
    return RewardModelVersion.objects.create(number=number, run=run, base_model_dir=run.base_model_dir,
                                             weights_dir=f"/rm/v{number}", label_count=1)


def test_two_runs_learn_only_from_their_own_labels_versions_and_reward_models(base_run, people):
    other = services.create_run("other", base_run.base_model_dir)
    assert other.base_version != base_run.base_version and other.head == other.base_version
    mine = label(people.annotator, comparison_in(base_run, ("mine chosen", "mine rejected")))
    theirs = label(people.annotator, comparison_in(other, ("theirs chosen", "theirs rejected")))

    assert list(preference_labels(base_run)) == [mine] and list(preference_labels(other)) == [theirs]
    assert [p.chosen for p in preference_pairs(preference_labels(other))] == ["theirs chosen"]
    first = reward_model(base_run, 1)
    assert services.latest_reward_model(base_run) == first and services.latest_reward_model(other) is None
    assert services.lineage_versions(other) == [other.base_version]

    # Human win rates of one run count only its own cross-version comparisons.
    v1 = PolicyVersion.objects.create(number=2, run=base_run, parent=base_run.base_version,
                                      base_model_dir=base_run.base_model_dir, adapter_dir="/adapters/v2")
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": "judge two versions"}])
    shown = [Completion.objects.create(prompt=prompt, policy_version=v, text=f"answer of v{v.number}")
             for v in (v1, base_run.base_version)]
    cross = create_comparison(base_run, prompt, shown, source="cross_version", rng=random.Random(0))
    label(people.researcher, cross)
    assert len(version_games([base_run])) == 1 and version_games([other]) == []
    assert not Comparison.objects.filter(run=other).exclude(items__completion__policy_version__run=other).exists()

    # The other run's round trains its own reward model on its own labels only.
    round_ = services.start_round(other, "rlhf")
    rm_job = round_.jobs.get()
    assert rm_job.run == other and rm_job.kind == Job.Kind.TRAIN_REWARD
    assert services.labels_since_latest_reward_model(other) == 1
    assert services.running_round(base_run) is None  # one run's round does not block another's


def test_a_branch_starts_at_its_version_and_inherits_labels_up_to_the_branch_point(base_run, people):
    v0 = base_run.base_version
    v1 = PolicyVersion.objects.create(number=1, run=base_run, parent=v0, method="ppo", adapter_dir="/adapters/v1",
                                      base_model_dir=v0.base_model_dir)
    base_run.head = v1
    base_run.method_config = {**base_run.method_config, "kl_coef": 0.2}
    base_run.save()
    rm1 = reward_model(base_run, 1)
    before = label(people.annotator, comparison_in(base_run))

    branch = services.branch_run(v1, "lower kl", created_by=people.researcher)
    after = label(people.annotator, comparison_in(base_run))  # the parent keeps labeling after the branch
    own = label(people.annotator, comparison_in(branch))

    assert (branch.head, branch.base_version, branch.parent_run, branch.branched_from) == (v1, v0, base_run, v1)
    assert branch.method == "ppo" and branch.method_config["kl_coef"] == 0.2  # the parent's settings, to edit
    assert set(preference_labels(branch)) == {before, own}
    assert set(preference_labels(base_run)) == {before, after}  # the branch's labels are not the parent's
    assert services.latest_reward_model(branch) == rm1  # inherited until it trains its own

    # Its first update continues v1's adapter with the inherited reward model...
    for i in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"update prompt {i}"}])
    update = services.start_round(branch, "direct").jobs.get()
    assert update.params["inputs"]["start_version"] == 1 and update.params["inputs"]["reward_model"] == 1
    assert training_inputs(update).start.adapter_dir == Path("/adapters/v1")
    # ...and may publish a sibling of a version the parent trains from v1 too.
    v2 = PolicyVersion.objects.create(number=2, run=base_run, parent=v1, base_model_dir=v0.base_model_dir)
    v3 = PolicyVersion.objects.create(number=3, run=branch, parent=v1, base_model_dir=v0.base_model_dir)
    assert set(v1.children.all()) == {v2, v3}
    assert 3 in [v.number for v in services.lineage_versions(branch)]
    assert 2 not in [v.number for v in services.lineage_versions(branch)]

    # A branch of the branch: its parent's labels so far, its grandparent's no later
    # than the first branch point.
    twig = services.branch_run(v3, "twig")
    later = label(people.annotator, comparison_in(base_run))
    assert twig.parent_run == branch and set(preference_labels(twig)) == {before, own}
    assert later in preference_labels(base_run) and later not in preference_labels(twig)


def test_branching_from_a_version_page(client, people, base_run):
    client.force_login(people.researcher)
    response = client.post(f"/progress/versions/{base_run.base_version.number}/branch", {"name": "from the base"})
    branch = Run.objects.get(name="from the base")
    assert response.status_code == 302 and response["Location"] == f"/runs/{branch.pk}/"
    page = client.get(f"/runs/{branch.pk}/").content.decode()
    assert "from the base" in page and f"v{base_run.base_version.number}" in page and base_run.name in page
    again = client.post(f"/progress/versions/{base_run.base_version.number}/branch", {"name": "from the base"},
                        follow=True)
    assert "already a run called" in again.content.decode() and Run.objects.count() == 2


def current_values(run: Run, **changes) -> dict:
    """What the settings form posts when nothing is touched, with `changes` applied."""
    form = RunSettingsForm(run)
    values = {name: field.initial for name, field in form.fields.items()}
    values.update(changes)
    return {name: ("" if value is None else value) for name, value in values.items() if value is not False}


def test_run_settings_are_checked_by_the_methods_config_and_saved(client, people, base_run):
    client.force_login(people.researcher)
    page = client.get(f"/runs/{base_run.pk}/").content.decode()
    assert 'name="method__kl_coef"' in page and "Weight of the KL penalty" in page  # the field's doc
    assert 'name="reward__epochs"' in page
    assert '<select name="reward__truncation"' in page and 'name="reward__fit_head_after_training"' in page

    refused = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method__kl_coef="-1",
                                                                   method__batch_size="6",
                                                                   method__num_mini_batches="4"))
    assert refused.status_code == 400 and "Settings not saved" in refused.content.decode()
    base_run.refresh_from_db()
    assert base_run.method_config["kl_coef"] == 0.05 and base_run.method_config["batch_size"] == 8

    saved = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method__kl_coef="0.2", recipe="direct",
                                                                 reward__epochs="2", reward__truncation="left",
                                                                 reward__fit_head_after_training=False))
    assert saved.status_code == 302
    base_run.refresh_from_db()
    assert (base_run.method_config["kl_coef"], base_run.recipe, base_run.reward_config["epochs"]) == (0.2, "direct",
                                                                                                    2.0)
    assert (base_run.reward_config["truncation"], base_run.reward_config["fit_head_after_training"]) == ("left", False)

    switched = client.post(f"/runs/{base_run.pk}/", current_values(base_run, method="dpo"), follow=True)
    base_run.refresh_from_db()
    assert base_run.method == "dpo" and base_run.method_config == method_defaults("dpo")
    assert "reset to its defaults" in switched.content.decode() and 'name="method__beta"' in switched.content.decode()


def test_a_new_run_needs_a_model_directory(client, people, tmp_path, tiny_model_dir):
    client.force_login(people.researcher)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    refused = client.post("/runs/new", {"name": "typo", "base_model_dir": str(empty), "method": "grpo"}, follow=True)
    assert "not a Hugging Face model directory" in refused.content.decode()
    assert not Run.objects.filter(name="typo").exists()

    client.post("/runs/new", {"name": "grpo run", "base_model_dir": str(tiny_model_dir), "method": "grpo"})
    run = Run.objects.get(name="grpo run")
    assert run.method == "grpo" and run.method_config == method_defaults("grpo")
    assert run.head == run.base_version and not run.base_version.adapter_dir
