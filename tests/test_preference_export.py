from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from labeling import services
from labeling.services import LabelInput

pytestmark = pytest.mark.django_db


@pytest.fixture
def labeled(people, make_comparison):
    """Four comparisons labeled a, b, tie, skip by the annotator, one ranking of three by
    the outsider. Returns the texts that must come out as (chosen, rejected)."""
    pairs = []
    for choice in ("a", "b", "tie", "skip"):
        comparison = make_comparison(texts=(f"{choice}-one", f"{choice}-two"))
        services.submit_label(people.annotator, LabelInput(comparison.pk, choice, active_seconds=3.5),
                              require_lease=False)
        left, right = (c.text for c in comparison.ordered_completions())
        if choice == "a":
            pairs.append((left, right))
        elif choice == "b":
            pairs.append((right, left))
    ranked = make_comparison(texts=("r-x", "r-y", "r-z"))
    services.submit_label(people.outsider, LabelInput(ranked.pk, "ranking", ranking=[1, 2, 0]), require_lease=False)
    shown = [c.text for c in ranked.ordered_completions()]
    pairs += [(shown[1], shown[2]), (shown[1], shown[0]), (shown[2], shown[0])]
    return pairs


def test_export_is_trl_preference_format_and_leaves_out_ties_and_skips(tmp_path, labeled):
    out = tmp_path / "prefs.jsonl"
    call_command("export_preferences", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == labeled
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected", "chosen_ended", "rejected_ended", "run", "run_id"}
        assert (row["run"], row["chosen_ended"], row["rejected_ended"]) == ("default", True, True)
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_raw_export_keeps_every_label_with_annotator_and_timing(tmp_path, labeled, people):
    out = tmp_path / "raw.jsonl"
    call_command("export_preferences", str(out), "--raw")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["choice"] for r in rows] == ["a", "b", "tie", "skip", "ranking"]
    assert {r["annotator"] for r in rows} == {"ann", "otto"}
    assert rows[0]["active_seconds"] == 3.5
    assert rows[4]["ranking"] == [1, 2, 0]
    assert all(c["policy_version"] == 0 for r in rows for c in r["completions"])


def test_download_button_streams_the_same_rows(client, people, labeled):
    client.force_login(people.researcher)
    response = client.get(reverse("export_labels"))
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert len(rows) == len(labeled)


@pytest.mark.slow
def test_export_loads_in_datasets_and_trains_one_reward_trainer_step(tmp_path, labeled, tiny_model_dir):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    out = tmp_path / "prefs.jsonl"
    call_command("export_preferences", str(out))
    dataset = load_dataset("json", data_files=str(out), split="train")
    assert dataset.num_rows == len(labeled)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = [p.detach().clone() for p in model.parameters()]
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"), per_device_train_batch_size=len(labeled), max_steps=1,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, max_length=128, logging_steps=1,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(b, a) for b, a in zip(before, model.parameters(), strict=True))


def test_bakeoff_and_experiment_labels_stay_out_of_the_preference_export(tmp_path, labeled, people, make_comparison,
                                                                        base_policy):
    from labeling.models import Comparison, LabeledBy
    from training.services import create_run

    on_evaluation_prompt = make_comparison(texts=("bake-one", "bake-two"))
    Comparison.objects.filter(pk=on_evaluation_prompt.pk).update(source=Comparison.Source.BAKEOFF)
    services.submit_label(people.annotator, LabelInput(on_evaluation_prompt.pk, "a"), require_lease=False)
    arm = create_run("experiment arm", base_policy.run.base_model_dir)
    arm.labeled_by = LabeledBy.SIMULATOR
    arm.save(update_fields=["labeled_by"])
    simulated = make_comparison(texts=("sim-one", "sim-two"))
    Comparison.objects.filter(pk=simulated.pk).update(run=arm)
    services.submit_label(people.annotator, LabelInput(simulated.pk, "b"), require_lease=False)

    call_command("export_preferences", str(tmp_path / "prefs.jsonl"), "--all-runs")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == labeled

    call_command("export_preferences", str(tmp_path / "raw.jsonl"), "--raw", "--run", "default")
    raw = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert [(r["comparison_id"], r["source"], r["run"], r["run_id"]) for r in raw[-1:]] == [
        (on_evaluation_prompt.pk, "bakeoff", "default", base_policy.run_id)]  # the default run's only
    assert arm.pk not in {r["run_id"] for r in raw}
    call_command("export_preferences", str(tmp_path / "all.jsonl"), "--raw", "--all-runs")
    raw = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [(r["comparison_id"], r["source"], r["run"], r["run_id"]) for r in raw[-2:]] == [
        (on_evaluation_prompt.pk, "bakeoff", "default", base_policy.run_id),
        (simulated.pk, "initial", "experiment arm", arm.pk)]


# --- per run: two runs' rows never mix, every row names its run, all runs only when asked


@pytest.fixture
def two_runs(people, make_comparison, base_run):
    """The default run with two preference labels and a second run with one, one of its
    answers cut at the token cap. Returns the second run."""
    from labeling.models import Comparison, Completion
    from training.services import create_run

    for texts in (("d-one", "d-two"), ("d-three", "d-four")):
        services.submit_label(people.annotator, LabelInput(make_comparison(texts=texts).pk, "a"),
                              require_lease=False)
    other = create_run("second", base_run.base_model_dir)
    theirs = make_comparison(texts=("s-cut", "s-whole"))
    Comparison.objects.filter(pk=theirs.pk).update(run=other)
    Completion.objects.filter(text="s-cut").update(ended=False, token_ids=[5, 6, 7])
    services.submit_label(people.annotator, LabelInput(theirs.pk, "a"), require_lease=False)
    return other


def lines_of(response) -> list[dict]:
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


def rows_of_command(tmp_path, *args) -> list[dict]:
    out = tmp_path / "out.jsonl"
    call_command("export_preferences", str(out), *args)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_command_exports_one_run_by_name_or_id_and_all_runs_only_when_asked(tmp_path, two_runs, base_run):
    from django.core.management import CommandError

    default = rows_of_command(tmp_path, "--run", "default")
    assert [r["chosen"][0]["content"][0] for r in default] == ["d", "d"]
    assert {(r["run"], r["run_id"]) for r in default} == {("default", base_run.pk)}
    second = rows_of_command(tmp_path, "--run", str(two_runs.pk))
    assert [(r["run"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in second] == [
        ("second", *[c.text for c in two_runs.comparisons.get().ordered_completions()])]
    raw = rows_of_command(tmp_path, "--run", "second", "--raw")
    assert [(r["run"], r["run_id"]) for r in raw] == [("second", two_runs.pk)]
    assert {c["text"]: c["ended"] for c in raw[0]["completions"]} == {"s-cut": False, "s-whole": True}

    with pytest.raises(CommandError, match=r"2 runs.*default \(id \d+\), second \(id \d+\).*--all-runs"):
        call_command("export_preferences", str(tmp_path / "mixed.jsonl"))
    assert not (tmp_path / "mixed.jsonl").exists()
    with pytest.raises(CommandError, match="no run 'third'"):
        call_command("export_preferences", str(tmp_path / "mixed.jsonl"), "--run", "third")

    every = rows_of_command(tmp_path, "--all-runs")
    assert [r["run"] for r in every] == ["default", "default", "second"]


def test_a_cut_answer_says_so_in_its_preference_row(tmp_path, two_runs):
    [row] = rows_of_command(tmp_path, "--run", "second")
    ended = {row["chosen"][0]["content"]: row["chosen_ended"], row["rejected"][0]["content"]: row["rejected_ended"]}
    assert ended == {"s-cut": False, "s-whole": True}


def test_the_download_takes_the_run_and_the_run_page_links_to_its_own(client, people, two_runs, base_run):
    client.force_login(people.researcher)
    mine = client.get(reverse("export_labels"), {"run": two_runs.pk})
    assert mine.status_code == 200 and f"run{two_runs.pk}" in mine["Content-Disposition"]
    assert [r["run"] for r in lines_of(mine)] == ["second"]
    assert [r["run"] for r in lines_of(client.get(reverse("export_labels"), {"run": "default", "raw": "1"}))] == [
        "default", "default"]
    refused = client.get(reverse("export_labels"))
    assert refused.status_code == 400
    assert "default (id" in refused.content.decode() and "second (id" in refused.content.decode()
    every = client.get(reverse("export_labels"), {"run": "all"})
    assert "all-runs" in every["Content-Disposition"]
    assert [r["run"] for r in lines_of(every)] == ["default", "default", "second"]

    page = client.get(reverse("run_detail", args=[two_runs.pk])).content.decode()
    assert f'href="/export/labels.jsonl?run={two_runs.pk}"' in page
    assert f'href="/export/labels.jsonl?run={two_runs.pk}&amp;raw=1"' in page
    overview = client.get(reverse("researcher")).content.decode()
    assert f'<option value="{two_runs.pk}">run second</option>' in overview and '<option value="all">' in overview
