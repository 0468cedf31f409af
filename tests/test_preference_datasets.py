"""Imported preference datasets: every format in and back out, bad files refused with
their line and nothing stored, 100,000 pairs on SQLite, and a run whose reward model and
methods train on them."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from labeling.models import ImportedPair, Label, PreferenceDataset
from labeling.preference_datasets import (
    PreferenceFileError,
    export_rows,
    import_dataset,
    strength_cutpoints,
    strength_for,
)
from tests.test_reward_model_ml import marker_pairs
from training import services
from training.models import Job, RunDataset
from training.services.datasets import dataset_pairs, weighted_indices

pytestmark = pytest.mark.django_db

HH_CHOSEN = ("\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers?\n\nHuman: Something rarer."
             "\n\nAssistant: How about Tiberius? It is uncommon and dignified.")
HH_REJECTED = ("\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers?\n\nHuman: Something rarer."
               "\n\nAssistant: Cat.")

FILES = {
    "standard": [
        {"prompt": "Name a colour.", "chosen": "Teal.", "rejected": "I cannot help with that."},
        {"prompt": "Two plus two?", "chosen": "Four.", "rejected": "Five."},
    ],
    "standard (implicit prompt)": [
        {"chosen": "Question: sky colour?\nAnswer: blue", "rejected": "Question: sky colour?\nAnswer: green"},
    ],
    "conversational": [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Greetings, and welcome to this long reply."}]},
    ],
    "conversational (implicit prompt)": [
        {"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]},
    ],
    "hh-rlhf": [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}],
}


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def imported(path: Path, name: str = "data") -> PreferenceDataset:
    dataset = PreferenceDataset.objects.create(name=name)
    import_dataset(dataset, path)
    dataset.refresh_from_db()
    return dataset


def stored_pairs(dataset: PreferenceDataset) -> list[tuple]:
    return [(p.prompt, p.chosen, p.rejected, p.score_chosen, p.score_rejected) for p in dataset.pairs.order_by("pk")]


@pytest.mark.parametrize("file_format", list(FILES))
def test_each_format_round_trips_through_export(file_format, tmp_path):
    dataset = imported(write_lines(tmp_path / "in.jsonl", FILES[file_format]))
    assert dataset.status == "ready" and dataset.formats == [file_format]
    assert dataset.pair_count == len(FILES[file_format]) == dataset.pairs.count()

    again = imported(write_lines(tmp_path / "out.jsonl", list(export_rows(dataset))), name="again")
    assert stored_pairs(again) == stored_pairs(dataset)
    assert again.formats == ["conversational"]


def test_formats_become_the_prompt_and_answers_a_reader_expects(tmp_path):
    rows = [row for rows in FILES.values() for row in rows]
    dataset = imported(write_lines(tmp_path / "all.jsonl", rows))
    pairs = {p.line: p for p in dataset.pairs.all()}
    assert (pairs[1].prompt, pairs[1].chosen, pairs[1].rejected) == (
        [{"role": "user", "content": "Name a colour."}], "Teal.", "I cannot help with that.")
    # TRL's implicit prompt: the shared start of the two strings.
    assert (pairs[3].prompt[0]["content"], pairs[3].chosen, pairs[3].rejected) == (
        "Question: sky colour?\nAnswer:", " blue", " green")
    assert pairs[4].prompt[0] == {"role": "system", "content": "Be brief."} and pairs[4].chosen == "Hello!"
    assert (pairs[5].prompt, pairs[5].chosen) == ([{"role": "user", "content": "Sky?"}], "Blue.")
    # HH-RLHF: the shared turns, split, are the prompt; the last assistant turns the answers.
    assert pairs[6].prompt == [
        {"role": "user", "content": "What is a good name for a cat?"},
        {"role": "assistant", "content": "Whiskers?"},
        {"role": "user", "content": "Something rarer."},
    ]
    assert (pairs[6].chosen, pairs[6].rejected) == ("How about Tiberius? It is uncommon and dignified.", "Cat.")
    assert all(p.origin == "imported" for p in pairs.values())


def test_standard_export_gives_back_the_same_lines(tmp_path):
    dataset = imported(write_lines(tmp_path / "in.jsonl", FILES["standard"]))
    assert list(export_rows(dataset, "standard")) == FILES["standard"]
    multi_turn = imported(write_lines(tmp_path / "hh.jsonl", FILES["hh-rlhf"]), name="hh")
    with pytest.raises(ValueError, match="3-turn prompt"):
        list(export_rows(multi_turn, "standard"))


def test_scores_become_strength_by_the_terciles_of_the_gaps(tmp_path):
    gaps = [0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 9.0]  # (a gap of 0 is a tie: skipped)
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b", "score_chosen": 1.0 + gap, "score_rejected": 1.0}
            for i, gap in enumerate(gaps)]
    dataset = imported(write_lines(tmp_path / "scored.jsonl", rows))
    # Worked by hand: sorted gaps, indices (9-1)//3 = 2 and 2·8//3 = 5, so cut at 1.0 and 4.0.
    assert dataset.strength_cutpoints == [1.0, 4.0]
    assert [p.strength for p in dataset.pairs.order_by("line")] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert strength_cutpoints([]) == [] and strength_for(None, [1.0, 2.0]) is None
    out = list(export_rows(dataset))[3]
    assert (out["score_chosen"], out["score_rejected"]) == (3.0, 1.0)


def test_lines_without_a_preference_are_skipped_and_counted(tmp_path):
    same_turn = [{"role": "assistant", "content": "Same."}]
    rows = [*FILES["standard"], {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN},
            {"chosen": same_turn, "rejected": same_turn},  # identical, and no prompt either: still skipped
            {"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 7, "score_rejected": 7}]
    dataset = imported(write_lines(tmp_path / "in.jsonl", rows))
    assert (dataset.pair_count, dataset.skipped_identical, dataset.skipped_ties) == (2, 2, 1)


@pytest.mark.parametrize(("chosen", "rejected", "prompt", "answers"), [
    ("What is the sky? The sky is blue.", "What is the sky? The sea is green.", "What is the sky? The",
     (" sky is blue.", " sea is green.")),
    ("Say hi. Hi", "Say hi. Hi!", "Say hi.", (" Hi", " Hi!")),
    ("Q: colour?\nA:\nTeal", "Q: colour?\nA:\nTan", "Q: colour?\nA:", ("\nTeal", "\nTan")),
])
def test_an_implicit_prompt_in_strings_ends_at_a_word_boundary(chosen, rejected, prompt, answers, tmp_path):
    """TRL's extract_prompt would cut "The s" | "ky is blue.": fine when joined again, not
    when the prompt becomes the user's turn."""
    pair = imported(write_lines(tmp_path / "in.jsonl", [{"chosen": chosen, "rejected": rejected}])).pairs.get()
    assert (pair.prompt[0]["content"], pair.chosen, pair.rejected) == (prompt, *answers)


BAD_FILES = [
    ([FILES["standard"][0], "{not json"], "line 2: invalid JSON"),
    ([FILES["standard"][0], {"prompt": "x", "chosen": "a"}], "line 2: missing field 'rejected'"),
    ([FILES["standard"][0], {"prompt": "x", "chosen": "a", "rejected": ["b"]}], "line 2: 'chosen' and 'rejected'"),
    ([{"prompt": "x", "chosen": "a\x00", "rejected": "b"}], "line 1: the text contains a NUL"),
    ([{"prompt": "  ", "chosen": "a", "rejected": "b"}], "line 1: empty prompt"),
    ([{"chosen": "abc", "rejected": "xyz"}], "line 1: the answers share no prompt"),
    ([{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}], "line 1: 'chosen' must be one assistant message"),
    ([{"prompt": [{"role": "assistant", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}], "line 1: the last message must be the user's"),
    ([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}],
     "line 1: the answers share no prompt"),
    ([{"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
       "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: d"}],
     "line 1: after the turns they share, 'chosen' must be one assistant turn"),
    ([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "Human: a Assistant: d"}],
     "line 1: 'rejected' is not an HH-RLHF transcript"),
    ([{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 1}], "line 1: give both"),
    ([{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": 2}],
     "line 1: 'score_chosen' (1) is below"),
    ([{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": True, "score_rejected": 0}],
     "line 1: 'score_chosen' must be a finite number"),
    ([], "holds no preference pairs"),
    (["[" * 100_000], "line 1: JSON nested too deeply"),
]


@pytest.mark.parametrize(("rows", "message"), BAD_FILES)
def test_bad_files_are_refused_with_their_line_and_nothing_is_stored(rows, message, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    dataset = PreferenceDataset.objects.create(name="bad")
    with pytest.raises(PreferenceFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_dataset(dataset, path)
    dataset.refresh_from_db()
    assert dataset.status == "failed" and message.split(": ", 1)[-1][:20] in dataset.error
    assert not ImportedPair.objects.exists()


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(FILES["standard"][0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PreferenceFileError, match="line 2: bytes that are not UTF-8"):
        imported(path)
    assert not ImportedPair.objects.exists()


def test_a_failure_while_writing_leaves_no_pairs(tmp_path, monkeypatch):
    import labeling.preference_datasets as module

    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(2500)]
    path = write_lines(tmp_path / "in.jsonl", rows)
    real_flush, calls = module.flush, []

    def flush_then_fail(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise OSError("disk full")
        return real_flush(batch)

    monkeypatch.setattr(module, "flush", flush_then_fail)
    dataset = PreferenceDataset.objects.create(name="half")
    with pytest.raises(OSError):
        import_dataset(dataset, path)
    dataset.refresh_from_db()
    assert calls[0] == 1000 and dataset.status == "failed" and "disk full" in dataset.error
    assert not ImportedPair.objects.exists()


@pytest.mark.slow
@pytest.mark.database_scale
def test_a_file_of_100000_pairs_imports_in_batches(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        for i in range(100_000):
            out.write(json.dumps({"prompt": f"Question {i}?", "chosen": f"Good answer {i}.",
                                  "rejected": f"Bad answer {i}.", "score_chosen": 5 + i % 3, "score_rejected": 4})
                      + "\n")
    seen = []
    dataset = PreferenceDataset.objects.create(name="big")
    import_dataset(dataset, path, on_progress=lambda done, total: seen.append((done, total)))
    dataset.refresh_from_db()
    assert dataset.status == "ready" and dataset.pair_count == 100_000 == dataset.pairs.count()
    assert dataset.pairs.order_by("-pk").first().chosen == "Good answer 99999."
    assert seen[-1] == (200_000, 200_000) and len(seen) > 100  # both passes report as they go
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_the_command_imports_with_a_bar_and_refuses_a_bad_file(tmp_path, capsys):
    call_command("import_preferences", str(write_lines(tmp_path / "hh.jsonl", FILES["hh-rlhf"] * 3)), name="hh")
    assert "Imported 3 pairs into dataset 'hh' (hh-rlhf)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="nothing imported: line 2: invalid JSON"):
        call_command("import_preferences", str(write_lines(tmp_path / "bad.jsonl", [FILES["hh-rlhf"][0], "{"])),
                     name="broken")
    with pytest.raises(CommandError, match="already exists"):
        call_command("import_preferences", str(tmp_path / "hh.jsonl"), name="hh")
    out = tmp_path / "out.jsonl"
    call_command("export_dataset", "hh", out=out)
    assert [json.loads(line)["chosen"][0]["content"] for line in out.read_text().splitlines()] == [
        "How about Tiberius? It is uncommon and dignified."] * 3
    with pytest.raises(CommandError, match="3-turn prompt"):
        call_command("export_dataset", "hh", format="standard", out=tmp_path / "std.jsonl")
    assert not (tmp_path / "std.jsonl").exists() and not list(tmp_path.glob("*.partial"))


def test_weights_scale_the_pairs_a_training_uses():
    rng = random.Random(0)
    quarter = weighted_indices(100, 0.25, rng)
    assert len(quarter) == 25 == len(set(quarter))
    assert weighted_indices(4, 2.0, rng) == [0, 0, 1, 1, 2, 2, 3, 3]
    one_and_a_half = weighted_indices(10, 1.5, rng)
    assert len(one_and_a_half) == 15 and set(one_and_a_half) == set(range(10))


def upload(client, name: str, rows: list, filename: str = "pairs.jsonl"):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    file = io.BytesIO(data)
    file.name = filename
    return client.post(reverse("datasets"), {"name": name, "description": "", "file": file})


def test_staff_upload_imports_in_a_job_and_a_run_uses_it(client, people, base_run, settings, tmp_path):
    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    client.force_login(people.researcher)
    response = upload(client, "hh", FILES["hh-rlhf"] * 2)
    dataset = PreferenceDataset.objects.get(name="hh")
    assert response.status_code == 302 and response["Location"] == reverse("dataset_detail", args=[dataset.pk])
    job = Job.objects.get(kind=Job.Kind.IMPORT_DATASET)
    assert job.run is None and dataset.status == "importing"
    assert client.get(reverse("researcher")).status_code == 200  # a job without a run lists fine

    services.run_job_now(job)
    job.refresh_from_db()
    dataset.refresh_from_db()
    assert job.status == "succeeded" and job.step == job.total_steps > 0
    assert dataset.status == "ready" and dataset.pair_count == 2
    assert not list((tmp_path / "uploads" / "datasets").iterdir())  # the upload is not kept
    page = client.get(reverse("dataset_detail", args=[dataset.pk])).content.decode()
    assert "Tiberius" in page and "ready" in page

    response = client.post(reverse("run_datasets", args=[base_run.pk]),
                           {"dataset": dataset.pk, "weight": "0.5", "for_reward_model": "on"})
    assert response.status_code == 302
    choice = RunDataset.objects.get(run=base_run)
    assert (choice.weight, choice.for_reward_model, choice.for_methods) == (0.5, True, False)
    assert "hh" in client.get(reverse("run_detail", args=[base_run.pk])).content.decode()
    download = client.get(reverse("download_dataset", args=[dataset.pk]))
    assert [json.loads(line)["rejected"][0]["content"] for line in
            b"".join(download.streaming_content).decode().splitlines()] == ["Cat.", "Cat."]
    client.post(reverse("run_datasets", args=[base_run.pk]), {"remove": dataset.pk})
    assert not RunDataset.objects.exists()
    assert Label.objects.count() == 0  # imported pairs are never labels


def test_a_bad_upload_fails_its_job_naming_the_line(client, people, settings, tmp_path):
    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    client.force_login(people.researcher)
    upload(client, "broken", [FILES["standard"][0], {"prompt": "x"}])
    job = services.run_job_now(Job.objects.get(kind=Job.Kind.IMPORT_DATASET))
    assert job.status == "failed" and "line 2: missing field 'chosen'" in job.error
    page = client.get(reverse("dataset_detail", args=[PreferenceDataset.objects.get().pk])).content.decode()
    assert "line 2: missing field" in page and not ImportedPair.objects.exists()
    assert upload(client, "broken", FILES["standard"]).status_code == 302  # the fixed file takes the failed one's name
    assert PreferenceDataset.objects.get(name="broken").status == "importing"
    assert upload(client, "broken", FILES["standard"]).status_code == 400  # now the name is taken


def test_annotators_cannot_reach_datasets(client, people, base_run):
    client.force_login(people.annotator)
    for url in (reverse("datasets"), reverse("dataset_detail", args=[1]), reverse("download_dataset", args=[1])):
        assert client.get(url).status_code in (302, 403)
    assert client.post(reverse("run_datasets", args=[base_run.pk]), {"remove": 1}).status_code in (302, 403)
    assert upload(client, "sneaky", FILES["standard"]).status_code in (302, 403)
    assert not PreferenceDataset.objects.exists()


def test_hostile_text_in_a_dataset_renders_inert(client, people, tmp_path):
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    dataset = imported(write_lines(tmp_path / "x.jsonl", [{"prompt": hostile, "chosen": hostile,
                                                            "rejected": "plain"}]), name=hostile[:90])
    client.force_login(people.researcher)
    for url in (reverse("dataset_detail", args=[dataset.pk]), reverse("datasets")):
        page = client.get(url).content.decode()
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def dataset_of_marker_pairs(tmp_path: Path, count: int, name: str = "markers") -> PreferenceDataset:
    rows = [{"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected}
            for p in marker_pairs(count, seed=11)]
    return imported(write_lines(tmp_path / f"{name}.jsonl", rows), name=name)


def test_jobs_pin_the_runs_datasets_and_their_pairs(base_run, tmp_path):
    dataset = dataset_of_marker_pairs(tmp_path, 40)
    services.use_dataset(base_run, dataset, weight=0.5, for_methods=False)
    job = services.create_reward_training_job(base_run)
    assert job.params["datasets"] == [{"id": dataset.pk, "name": "markers", "weight": 0.5}]
    services.use_dataset(base_run, dataset, weight=2.0)  # later changes leave the queued job alone
    assert Job.objects.get(pk=job.pk).params["datasets"][0]["weight"] == 0.5

    pairs, used = dataset_pairs(job.params["datasets"], seed=1)
    assert len(pairs) == 20 == used[0]["pairs"] and all(p.group < 0 and p.imported for p in pairs)
    twice, _ = dataset_pairs([{**job.params["datasets"][0], "weight": 2.0}], seed=1)
    by_group = {}
    for pair in twice:  # copies of a pair, and pairs on one prompt, share a group: held out together
        by_group.setdefault(pair.group, set()).add(pair.prompt[0]["content"])
    assert len(twice) == 80 and len(by_group) == 40 and all(len(prompts) == 1 for prompts in by_group.values())
    assert {p.chosen for p in pairs} <= set(dataset.pairs.values_list("chosen", flat=True))
    with pytest.raises(services.DatasetError, match="at most 10"):
        services.use_dataset(base_run, dataset, weight=11)
    importing = PreferenceDataset.objects.create(name="not yet")
    with pytest.raises(services.DatasetError, match="not ready"):
        services.use_dataset(base_run, importing)


def test_dpo_runs_on_an_imported_dataset_before_any_label(base_run, tmp_path):
    from training.services.policy_updates import create_policy_update_job, training_inputs

    with pytest.raises(services.PolicyUpdateError, match="has none yet"):
        create_policy_update_job(base_run, base_run.base_version, None, method="dpo", method_config={})
    dataset = dataset_of_marker_pairs(tmp_path, 12)
    services.use_dataset(base_run, dataset, for_reward_model=False)
    job = create_policy_update_job(base_run, base_run.base_version, None, method="dpo", method_config={})
    assert job.params["inputs"]["datasets"][0]["id"] == dataset.pk
    assert len(training_inputs(job).pairs) == 12
    assert services.create_reward_training_job(base_run).params["datasets"] == []  # not chosen for the RM


@pytest.mark.slow
def test_a_reward_model_pretrained_on_a_dataset_before_the_first_label(base_run, tiny_model_dir, settings, tmp_path):
    """Preference-model pre-training: no human label yet, the run's reward model learns
    the imported preference (the marker word wins) and records what it used."""
    from tests.test_reward_model_training import use_model

    settings.PREFLOOP_ARTIFACT_DIR = tmp_path / "artifacts"
    use_model(base_run, tiny_model_dir)
    base_run.reward_config.update(learning_rate=3e-3, epochs=2, ensemble_size=2)
    base_run.save()
    services.use_dataset(base_run, dataset_of_marker_pairs(tmp_path, 120))
    job = services.run_job_now(services.create_reward_training_job(base_run))
    assert job.status == "succeeded", job.error
    version = base_run.reward_models.get()
    assert version.label_count == 0 and version.datasets[0]["pairs"] == 120
    assert version.train_pairs + version.heldout_pairs == 120 and version.heldout_accuracy >= 0.8
    assert version.heldout_accuracy_imported == version.heldout_accuracy  # no label held out: the imported ones
    # The policy never answered yet: the rewards are normalized on the pairs' answers.
    assert (version.reward_mean, version.reward_std) != (0.0, 1.0)


def test_a_retried_import_job_finishes_what_the_dead_attempt_left(tmp_path, settings, people):
    """The worker died after writing half the pairs: the job sent again starts over and
    ends with each pair once; sent again after the dataset was ready, it changes nothing."""
    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(2500)]
    with open(write_lines(tmp_path / "in.jsonl", rows), "rb") as upload:
        dataset, job = services.start_dataset_import("retried", upload, "in.jsonl", requested_by=people.researcher)
    path = Path(job.params["path"])
    ImportedPair.objects.create(dataset=dataset, line=1, prompt=[], chosen="x", rejected="y")  # a dead attempt's
    job.mark_running("dead-host:1")  # attempt 1 died there; the sweep sends the job again
    services.run_job_now(job)
    dataset.refresh_from_db()
    assert (dataset.status, dataset.pair_count, dataset.pairs.count()) == ("ready", 2500, 2500)
    assert not path.exists()

    again = Job.objects.create(kind=Job.Kind.IMPORT_DATASET, params=job.params)
    assert services.run_job_now(again).status == "succeeded" and dataset.pairs.count() == 2500


def test_a_superseded_attempt_stops_and_leaves_the_dataset_to_the_newer_one(tmp_path):
    import labeling.preference_datasets as module

    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(2500)]
    path = write_lines(tmp_path / "in.jsonl", rows)
    dataset = PreferenceDataset.objects.create(name="contested")
    answers = iter([True, False])  # current for its first batch, then another attempt took over
    with pytest.raises(module.ImportSuperseded):
        import_dataset(dataset, path, still_current=lambda: next(answers, False))
    dataset.refresh_from_db()
    assert dataset.status == "importing" and dataset.pairs.count() == 1000  # left for the newer attempt


def test_an_import_job_that_never_ran_frees_its_dataset(tmp_path, settings, people):
    """The broker was unreachable (or the sweep gave up): the dataset is failed, holds
    nothing, its name is free, and the upload is gone."""
    from training.services.jobs import announce_finished

    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    with open(write_lines(tmp_path / "in.jsonl", FILES["standard"]), "rb") as upload:
        dataset, job = services.start_dataset_import("lost", upload, "in.jsonl")
    job.mark_failed("could not reach the task queue: connection refused")
    announce_finished(job)
    dataset.refresh_from_db()
    assert dataset.status == "failed" and "task queue" in dataset.error
    assert not Path(job.params["path"]).exists()
    with open(tmp_path / "in.jsonl", "rb") as upload:
        assert services.start_dataset_import("lost", upload, "in.jsonl")[0].status == "importing"


def test_ctrl_c_during_the_command_leaves_no_pairs(tmp_path, monkeypatch):
    import labeling.preference_datasets as module

    def interrupted(batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "flush", interrupted)
    with pytest.raises(KeyboardInterrupt):
        call_command("import_preferences", str(write_lines(tmp_path / "in.jsonl", FILES["standard"])), name="cut")
    assert PreferenceDataset.objects.get(name="cut").status == "failed" and not ImportedPair.objects.exists()


@pytest.mark.parametrize(("name", "message"), [("x" * 101, "longer than 100"), ("nul\x00", "NUL"), (" ", "a name")])
def test_bad_names_are_refused_and_leave_no_file(name, message, tmp_path, settings):
    settings.PREFLOOP_UPLOAD_DIR = tmp_path / "uploads"
    with open(write_lines(tmp_path / "in.jsonl", FILES["standard"]), "rb") as upload:
        with pytest.raises(services.DatasetError, match=message):
            services.start_dataset_import(name, upload, "in.jsonl")
    assert not PreferenceDataset.objects.exists()
    assert not (tmp_path / "uploads").exists() or not list((tmp_path / "uploads").rglob("*.jsonl"))
