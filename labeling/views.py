from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from labeling import exporting, services, statistics
from labeling.forms import PromptImportForm
from labeling.importing import PromptFileError, import_prompt_file
from labeling.presenters import comparison_for_annotator
from labeling.schemas import label_from_json
from prefloop.access import staff_required
from prefloop.charts import labels_per_day


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("researcher" if request.user.is_staff else "label")


@login_required
@require_GET
def label_page(request: HttpRequest) -> HttpResponse:
    return render(request, "labeling/label.html", {"idle_ms": settings.PREFLOOP_IDLE_SECONDS * 1000})


@login_required
@require_GET
def me(request: HttpRequest) -> HttpResponse:
    """An annotator's own numbers; nobody else's labels are shown."""
    summary = statistics.annotator_summary(request.user)
    chart = labels_per_day(summary["days"], {"labels": summary["per_day"]}, "My labels per day")
    return render(request, "labeling/me.html", {"summary": summary, "charts": {"my-labels-per-day": chart}})


def queue_state(request: HttpRequest, comparison, **extra) -> JsonResponse:
    return JsonResponse(
        {
            "comparison": comparison_for_annotator(comparison) if comparison else None,
            "counts": services.annotator_counts(request.user, settings.PREFLOOP_QUEUE_COUNT_MAX_AGE),
            **extra,
        }
    )


@login_required
@require_POST
def next_comparison(request: HttpRequest) -> JsonResponse:
    """A POST: it takes (or renews) a lease on the comparison it returns."""
    return queue_state(request, services.next_comparison_for(request.user))


@login_required
@require_POST
def submit_label(request: HttpRequest) -> JsonResponse:
    try:
        label_input = label_from_json(request.body)
        label, created = services.submit_label(request.user, label_input)
    except services.LeaseError as error:
        return JsonResponse({"error": str(error)}, status=409)
    except services.LabelError as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse({"label_id": label.pk, "duplicate": not created})


@login_required
@require_POST
def undo_label(request: HttpRequest) -> JsonResponse:
    try:
        undone = services.undo_last_label(request.user)
    except services.UndoRefused as error:
        return JsonResponse({"error": str(error)}, status=409)
    if undone is None:
        return queue_state(request, services.next_comparison_for(request.user), undone=False)
    return queue_state(request, undone, undone=True)


@staff_required
def import_prompts(request: HttpRequest) -> HttpResponse:
    form = PromptImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            # Read one byte past the limit so an oversized file is reported, not truncated.
            data = upload.read(settings.PREFLOOP_MAX_IMPORT_BYTES + 1)
            result = import_prompt_file(upload.name, data, settings.PREFLOOP_MAX_IMPORT_BYTES)
        except PromptFileError as error:
            form.add_error("file", f"Nothing was imported: {error}")
        else:
            messages.success(
                request, f"Imported {result.created} prompts ({result.duplicates} already present, skipped)."
            )
            return redirect("import_prompts")
    return render(request, "labeling/import.html", {"form": form}, status=400 if form.errors else 200)


@staff_required
@require_GET
def export_labels(request: HttpRequest) -> HttpResponse:
    """One run's labels (`?run=` id or name; `all` for every run's), as a download."""
    raw = request.GET.get("raw") == "1"
    try:
        run = exporting.export_run(request.GET.get("run"))
    except exporting.ExportRunError as error:
        return HttpResponse(f"Nothing exported: {error}.\n", status=400, content_type="text/plain; charset=utf-8")
    rows = exporting.export_rows(raw, run)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(exporting.jsonl_lines(rows), content_type="application/jsonl; charset=utf-8")
    # The run's id, not its name, in the file name: a name may hold any character.
    name = f"prefloop-{'labels-raw' if raw else 'preferences'}-{f'run{run.pk}' if run else 'all-runs'}-{stamp}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
