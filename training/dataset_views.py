"""Pages for imported preference datasets: upload (a background import with a progress
bar), read a sample, download, and choose which runs train on them."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from labeling.exporting import jsonl_lines
from labeling.models import PreferenceDataset
from labeling.preference_datasets import EXPORT_FORMATS, check_export, export_rows
from prefloop.access import staff_required
from training import services
from training.forms import DatasetUploadForm, RunDatasetForm
from training.models import Job, Run

SAMPLE_PAIRS = 5


@staff_required
def datasets(request: HttpRequest) -> HttpResponse:
    """Every dataset with its state, and the upload form (POST starts an import)."""
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            dataset, _ = services.start_dataset_import(form.cleaned_data["name"], upload, upload.name,
                                                       form.cleaned_data["description"], request.user)
        except services.DatasetError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Importing {dataset.name}: the bar below shows how far it got.")
            return redirect("dataset_detail", dataset.pk)
    context = {"datasets": PreferenceDataset.objects.select_related("created_by").order_by("-pk"), "form": form}
    return render(request, "training/datasets.html", context, status=400 if form.errors else 200)


@staff_required
@require_GET
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = get_object_or_404(PreferenceDataset, pk=dataset_id)
    jobs = Job.objects.filter(kind=Job.Kind.IMPORT_DATASET, params__dataset=dataset.pk).select_related("requested_by")
    context = {
        "dataset": dataset, "sample": dataset.pairs.order_by("pk")[:SAMPLE_PAIRS], "jobs": jobs,
        "used_by": dataset.runs.select_related("run"), "export_formats": EXPORT_FORMATS,
    }
    return render(request, "training/dataset.html", context)


@staff_required
@require_GET
def download_dataset(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = get_object_or_404(PreferenceDataset, pk=dataset_id, status=PreferenceDataset.Status.READY)
    layout = request.GET.get("format", "conversational")
    try:
        check_export(dataset, layout)
    except ValueError as error:
        return HttpResponse(str(error), status=400, content_type="text/plain")
    response = StreamingHttpResponse(jsonl_lines(export_rows(dataset, layout)), content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="dataset-{dataset.pk}-{layout}.jsonl"'
    return response


@staff_required
@require_POST
def run_datasets(request: HttpRequest, run_id: int) -> HttpResponse:
    """Add a dataset to the run's training, change its weight or use, or drop it."""
    run = get_object_or_404(Run, pk=run_id)
    if "remove" in request.POST:
        if not request.POST["remove"].isdigit():
            return HttpResponse("remove must be a dataset id", status=400, content_type="text/plain")
        dataset = get_object_or_404(PreferenceDataset, pk=int(request.POST["remove"]))
        services.stop_using_dataset(run, dataset)
        messages.success(request, f"{run.name} no longer trains on {dataset.name}; queued jobs keep what they pinned.")
        return redirect("run_detail", run.pk)
    form = RunDatasetForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Dataset not added: " + "; ".join(e for errs in form.errors.values() for e in errs))
        return redirect("run_detail", run.pk)
    data = form.cleaned_data
    try:
        services.use_dataset(run, data["dataset"], data["weight"], data["for_reward_model"], data["for_methods"])
    except services.DatasetError as error:
        messages.error(request, f"Dataset not added: {error}")
    else:
        messages.success(request, f"{run.name} trains on {data['dataset'].name} (weight {data['weight']:g}) from "
                                  "its next job.")
    return redirect("run_detail", run.pk)
