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
        assert set(row) == {"prompt", "chosen", "rejected"}
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

    call_command("export_preferences", str(tmp_path / "prefs.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == labeled

    call_command("export_preferences", str(tmp_path / "raw.jsonl"), "--raw")
    raw = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert [(r["comparison_id"], r["source"], r["run"]) for r in raw[-2:]] == [
        (on_evaluation_prompt.pk, "bakeoff", base_policy.run_id), (simulated.pk, "initial", arm.pk)]
