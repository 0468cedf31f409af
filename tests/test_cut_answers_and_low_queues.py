"""Answers cut at the token cap are marked for annotators (the browser side is in
tests/test_label_browser.py), and the researcher is warned, with the button to generate
more, when a run's labeling queue is about to run dry."""

from __future__ import annotations

import pytest

from labeling import services as labeling
from labeling.models import Comparison, Completion, LabeledBy
from labeling.services import LabelInput
from training.models import Job
from training.services import QUEUE_LOW_COMPARISONS, create_run, queues_running_dry

pytestmark = pytest.mark.django_db


def test_the_labeling_queue_says_which_answer_was_cut_and_at_how_many_tokens(client, people, make_comparison):
    comparison = make_comparison(texts=("stops mid", "a whole answer"))
    Completion.objects.filter(text="stops mid").update(ended=False, token_ids=[1, 2, 3])
    client.force_login(people.annotator)
    served = client.post("/label/api/next").json()["comparison"]
    assert served["id"] == comparison.pk
    cut = {"stops mid" in c["html"]: c["cut_off_at"] for c in served["completions"]}
    assert cut == {True: 3, False: None}
    # Text from elsewhere has no token ids: the cap it was sampled with stands in.
    Completion.objects.filter(text="stops mid").update(token_ids=None, generation_settings={"max_new_tokens": 96})
    again = client.post("/label/api/next").json()["comparison"]
    assert sorted(c["cut_off_at"] or 0 for c in again["completions"]) == [0, 96]


def open_comparisons(make_comparison, count: int) -> None:
    for _ in range(count):
        make_comparison()


def test_a_run_nearly_out_of_comparisons_is_warned_about_with_the_generate_button(client, people, base_run,
                                                                                 make_comparison):
    client.force_login(people.researcher)
    open_comparisons(make_comparison, QUEUE_LOW_COMPARISONS)
    assert queues_running_dry([base_run]) == []
    for page in ("/researcher/", f"/runs/{base_run.pk}/"):
        assert 'class="queue-low"' not in client.get(page).content.decode(), page

    labeling.submit_label(people.annotator, LabelInput(Comparison.objects.first().pk, "a"), require_lease=False)
    [low] = queues_running_dry([base_run])
    assert (low.run, low.open_comparisons, low.generation_pending) == (base_run, QUEUE_LOW_COMPARISONS - 1, False)
    for page in ("/researcher/", f"/runs/{base_run.pk}/"):
        html = client.get(page).content.decode()
        assert f"only {QUEUE_LOW_COMPARISONS - 1} comparisons left to label" in html, page
        assert "{#" not in html and "comment %}" not in html, page
        assert f'action="/runs/{base_run.pk}/generate"' in html.split('class="queue-low"')[1], page

    # The button queues a generation job from the head, as the form below it does.
    response = client.post(f"/runs/{base_run.pk}/generate", {"policy": base_run.head_id,
                                                             "prompt_count": base_run.comparison_prompts,
                                                             "samples": 2})
    assert response.status_code == 302
    job = Job.objects.get(kind=Job.Kind.GENERATE)
    assert (job.run, job.params["policy_version"]) == (base_run, base_run.head.number)
    [low] = queues_running_dry([base_run])
    assert low.generation_pending
    assert "already queued or running" in client.get(f"/runs/{base_run.pk}/").content.decode()


def test_bakeoff_comparisons_and_simulated_runs_do_not_count(base_run, make_comparison):
    open_comparisons(make_comparison, QUEUE_LOW_COMPARISONS)
    Comparison.objects.filter(pk=Comparison.objects.first().pk).update(source=Comparison.Source.BAKEOFF)
    assert [low.open_comparisons for low in queues_running_dry([base_run])] == [QUEUE_LOW_COMPARISONS - 1]
    arm = create_run("arm", base_run.base_model_dir)
    arm.labeled_by = LabeledBy.SIMULATOR
    arm.save(update_fields=["labeled_by"])
    assert [low.run for low in queues_running_dry([base_run, arm])] == [base_run]
