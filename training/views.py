from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from labeling.models import Comparison, Label, Prompt
from labeling.rendering import render_untrusted_markdown
from prefloop.access import staff_required
from training import pages, services
from training.forms import (
    BranchRunForm,
    CreateRunForm,
    ExternalCompletionsForm,
    GenerateComparisonsForm,
    GuidelinesForm,
    RunDatasetForm,
    RunSettingsForm,
    StartBakeOffForm,
    StartRoundForm,
    StopLoopForm,
)
from training.ml.export import iter_tar
from training.ml.methods import METHODS
from training.models import BakeOff, BakeOffCandidate, Job, PolicyVersion, Round, Run
from training.recipes import RECIPES
from training.services.exports import policy_export
from training.services.workers import worker_status


def recent_jobs(runs=None, limit: int = 20):
    jobs = Job.objects.select_related("requested_by", "round", "run")
    return (jobs.filter(run__in=runs) if runs is not None else jobs)[:limit]


@staff_required
@require_GET
def researcher(request: HttpRequest) -> HttpResponse:
    """The overview: every run at a glance, a new run, the data, the latest jobs."""
    runs = Run.objects.select_related("head", "parent_run").annotate(version_count=Count("versions", distinct=True))
    context = {
        "runs": runs, "methods": METHODS, "recipes": RECIPES, "create_form": CreateRunForm(), "jobs": recent_jobs(),
        "prompt_count": Prompt.objects.count(), "comparison_count": Comparison.objects.count(),
        "label_count": Label.objects.exclude(choice=Label.Choice.SKIP).count(),
        "queues_low": services.queues_running_dry(runs), "queue_low_below": services.QUEUE_LOW_COMPARISONS,
    }
    return render(request, "training/researcher.html", context)


@staff_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    """A run's page: its settings (saved on POST), rounds, versions and reward models."""
    run = get_object_or_404(Run.objects.select_related("head", "base_version", "parent_run", "branched_from"),
                            pk=run_id)
    form = RunSettingsForm(run, request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            services.update_run_settings(run, form.settings)
            note = " The method's config was reset to its defaults." if form.method_changed else ""
            if form.recipe_switched:
                note += f" The recipe is now {RECIPES[form.recipe_switched].title}, which fits the new method."
            messages.success(request, f"Settings of {run.name} saved; jobs already queued keep theirs.{note}")
            return redirect("run_detail", run.pk)
        messages.error(request, "Settings not saved: see the errors below.")
    versions = PolicyVersion.objects.filter(pk__in=[v.pk for v in services.lineage_versions(run)]).select_related(
        "parent", "run").annotate(completion_count=Count("completions"))
    reward_models = services.reward_models_to_list(run)
    context = {
        "run": run, "form": form, "round_form": StartRoundForm(), "generate_form": GenerateComparisonsForm(run),
        "versions": versions, "methods": METHODS, "reward_models": reward_models,
        "latest_reward_model": services.latest_reward_model(run),
        "labels_since_reward_model": services.labels_since_latest_reward_model(run),
        "rounds": run.rounds.select_related("policy_before", "policy_after", "reward_model")[:20],
        "jobs": recent_jobs([run]), "branches": run.branches.all(),
        "external_form": ExternalCompletionsForm(run),
        "guidelines_form": GuidelinesForm(initial={"guidelines": run.guidelines}),
        "guidelines_html": render_untrusted_markdown(run.guidelines),
        "run_datasets": run.datasets.select_related("dataset"), "dataset_form": RunDatasetForm(),
        "bakeoff_form": StartBakeOffForm(), "bakeoffs": run.bakeoffs.select_related("start")[:20],
        "planned_peaks": services.planned_peaks(run),
        "queue_low": next(iter(services.queues_running_dry([run])), None),
        "queue_low_below": services.QUEUE_LOW_COMPARISONS,
    }
    return render(request, "training/run.html", context, status=400 if form.errors else 200)


class FormRefused(ValueError):
    """A form's errors, raised so that they end up where a service's refusal does."""


def valid_data(form) -> dict:
    if not form.is_valid():
        raise FormRefused("; ".join(
            " ".join(errors) if field == "__all__" else f"{(form.fields[field].label or field).rstrip(':')}: "
                                                        f"{' '.join(errors)}"
            for field, errors in form.errors.items()))
    return form.cleaned_data


def act(request: HttpRequest, action: Callable[[], tuple[str, str]], *, refused: str, back: str) -> HttpResponse:
    """The shape every training control has: do `action`, which returns (what was done,
    where to go); a form or service refusal (services raise ValueError subclasses)
    becomes an error message and a way back, and changes nothing."""
    try:
        done, url = action()
    except ValueError as error:
        messages.error(request, f"{refused}: {error}")
        return redirect(back)
    messages.success(request, done)
    return redirect(url)


@staff_required
@require_POST
def create_run(request: HttpRequest) -> HttpResponse:
    def create():
        data = valid_data(CreateRunForm(request.POST))
        chosen = services.RunSettings(**services.default_settings(data["method"]))
        run = services.create_run(data["name"], data["base_model_dir"], request.user, data["description"], chosen)
        return f"Created {run} from {run.base_model_dir}.", reverse("run_detail", args=[run.pk])

    return act(request, create, refused="No run created", back=reverse("researcher"))


@staff_required
@require_POST
def branch_run(request: HttpRequest, number: int) -> HttpResponse:
    version = get_object_or_404(PolicyVersion, number=number)

    def branch():
        run = services.branch_run(version, valid_data(BranchRunForm(request.POST))["name"], request.user)
        return f"Created {run}, starting from v{version.number}.", reverse("run_detail", args=[run.pk])

    return act(request, branch, refused="No branch created", back=reverse("version_detail", args=[number]))


@staff_required
@require_POST
def start_round(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    here = reverse("run_detail", args=[run.pk])

    def start():
        round_ = services.start_round(run, valid_data(StartRoundForm(request.POST))["recipe"] or None,
                                      requested_by=request.user)
        return f"Started {round_} of {run.name} ({round_.recipe_title}).", here

    return act(request, start, refused="Not started", back=here)


@staff_required
@require_POST
def start_bakeoff(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)

    def start():
        methods = valid_data(StartBakeOffForm(request.POST))["methods"]
        bakeoff = services.start_bakeoff(run, methods, requested_by=request.user)
        return (f"Started {bakeoff} of {run.name}: {len(methods)} candidate(s) from v{bakeoff.start.number}.",
                reverse("bakeoff_detail", args=[bakeoff.pk]))

    return act(request, start, refused="No bake-off started", back=reverse("run_detail", args=[run.pk]))


@staff_required
@require_GET
def bakeoff_detail(request: HttpRequest, bakeoff_id: int) -> HttpResponse:
    bakeoff = get_object_or_404(BakeOff.objects.select_related("run", "start", "reward_model", "promoted"),
                                pk=bakeoff_id)
    jobs = services.bakeoff_jobs(bakeoff).select_related("requested_by", "round", "run")
    return render(request, "training/bakeoff.html", {**pages.page_context(pages.bakeoff_page(bakeoff)), "jobs": jobs})


@staff_required
@require_POST
def promote_candidate(request: HttpRequest, candidate_id: int) -> HttpResponse:
    candidate = get_object_or_404(BakeOffCandidate.objects.select_related("bakeoff__run"), pk=candidate_id)
    here = reverse("bakeoff_detail", args=[candidate.bakeoff_id])

    def promote():
        version = services.promote_candidate(candidate)
        return f"v{version.number} ({candidate.method}) is now the head of {candidate.bakeoff.run.name}.", here

    return act(request, promote, refused="Not promoted", back=here)


@staff_required
@require_POST
def generate_comparisons(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    here = reverse("run_detail", args=[run.pk])

    def generate():
        data = valid_data(GenerateComparisonsForm(run, request.POST))
        job = services.request_generation(run, data["policy"], data["prompt_count"], request.user, data["samples"])
        return f"Queued generation job #{job.pk} on the gpu queue.", here

    return act(request, generate, refused="Not started", back=here)


@staff_required
@require_POST
def import_completions(request: HttpRequest, run_id: int) -> HttpResponse:
    """Answers of outside systems, as blind comparisons of the run (all or nothing)."""
    run = get_object_or_404(Run, pk=run_id)
    here = reverse("run_detail", args=[run.pk])

    def import_file():
        data = valid_data(ExternalCompletionsForm(run, request.POST, request.FILES))
        upload = data["file"]
        # One byte past the limit, so an oversized file is reported, not truncated.
        content = upload.read(settings.PREFLOOP_MAX_IMPORT_BYTES + 1)
        result = services.import_external_completions(run, upload.name, content,
                                                      against_version=data["against_version"],
                                                      requested_by=request.user)
        return result.summary(), here

    return act(request, import_file, refused="Nothing was imported", back=here)


@staff_required
@require_POST
def train_reward_model(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    job = services.request_reward_training(run, requested_by=request.user)
    messages.success(request, f"Reward-model training job #{job.pk} is queued on the train queue.")
    return redirect("run_detail", run.pk)


@staff_required
@require_GET
def job_status(request: HttpRequest, job_id: int) -> JsonResponse:
    job = get_object_or_404(Job, pk=job_id)
    return JsonResponse(
        {"id": job.pk, "status": job.status, "status_text": job.status_text, "step": job.step,
         "total_steps": job.total_steps, "can_be_cancelled": job.can_be_cancelled,
         "progress": job.progress, "eta_seconds": job.eta_seconds, "error": job.error}
    )


@staff_required
@require_POST
def cancel_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """Cancel a pending or running job (services.cancel_job), then back to the page the
    button was on."""
    job = get_object_or_404(Job, pk=job_id)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = reverse("researcher")
    return act(request, lambda: (services.cancel_job(job, request.user), back), refused="Not cancelled", back=back)


@login_required
@require_POST
def stop_loop(request: HttpRequest) -> HttpResponse:
    """Every signed-in person, annotators included, can stop every run at once."""
    form = StopLoopForm(request.POST)
    services.pause_runs(request.user, form.cleaned_data["reason"] if form.is_valid() else "")
    messages.warning(request, "The loop is stopped: no new round starts until a researcher resumes it.")
    return redirect(request.POST.get("next") if request.POST.get("next") in ("/label/", "/researcher/") else "home")


@staff_required
@require_POST
def save_guidelines(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    back = reverse("run_detail", args=[run.pk])

    def save():
        services.set_guidelines(run, valid_data(GuidelinesForm(request.POST))["guidelines"])
        return f"Guidelines of {run.name} saved; annotators see them from their next comparison.", back

    return act(request, save, refused="Guidelines not saved", back=back)


@staff_required
@require_POST
def pause_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    services.pause_runs(request.user, "paused on the run page", runs=[run])
    messages.warning(request, f"{run} is paused: its round waits before its next stage.")
    return redirect("run_detail", run.pk)


@staff_required
@require_POST
def resume(request: HttpRequest) -> HttpResponse:
    """Resume one run (`run` in the form) or every paused run."""
    run_id = request.POST.get("run")
    runs = Run.objects.filter(pk=run_id) if run_id and run_id.isdigit() else Run.objects.filter(paused=True)
    resumed = services.resume_runs(list(runs))
    messages.success(request, f"{resumed} run(s) running again.")
    return redirect("run_detail", int(run_id)) if run_id and run_id.isdigit() else redirect("researcher")


@staff_required
@require_GET
def progress(request: HttpRequest) -> HttpResponse:
    """One run (`?run=ID`) or several side by side (`?run=1&run=2`, or `?run=all`)."""
    chosen = request.GET.getlist("run")
    all_runs = list(Run.objects.select_related("base_version"))
    if "all" in chosen:
        runs = all_runs
    else:
        runs = [r for r in all_runs if str(r.pk) in chosen] or all_runs[:1]
    context = {**pages.page_context(pages.dashboard(runs)), "all_runs": all_runs, "jobs": recent_jobs(runs, 10)}
    return render(request, "training/progress.html", context)


@staff_required
@require_GET
def round_detail(request: HttpRequest, number: int) -> HttpResponse:
    round_ = get_object_or_404(Round.objects.select_related("run", "policy_before", "policy_after", "reward_model"),
                               number=number)
    return render(request, "training/round.html", pages.page_context(pages.round_page(round_)))


@staff_required
@require_GET
def version_detail(request: HttpRequest, number: int) -> HttpResponse:
    version = get_object_or_404(PolicyVersion.objects.select_related("parent", "run"), number=number)
    return render(request, "training/version.html", {**pages.page_context(pages.version_page(version)),
                                                     "branch_form": BranchRunForm()})


@staff_required
@require_GET
def download_policy(request: HttpRequest, number: int) -> HttpResponse:
    """The version as a streamed tar: `?format=merged` (a plain Hugging Face model
    directory) or `?format=adapter` (its LoRA adapter). Built once, then served from
    var/exports/ (the first download of a merged version waits for the merge)."""
    version = get_object_or_404(PolicyVersion, number=number)
    form = request.GET.get("format", "merged")
    try:
        folder = policy_export(version, form)
    except ValueError as error:
        return HttpResponse(f"{error}\n", status=400, content_type="text/plain")
    name = f"prefloop-v{version.number}-{form}"
    response = StreamingHttpResponse(iter_tar(folder, name), content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response


@staff_required
@require_GET
def workers(request: HttpRequest) -> JsonResponse:
    return JsonResponse(worker_status())


@staff_required
@require_POST
def evaluate(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=run_id)
    job = services.request_evaluation(run, requested_by=request.user)
    messages.success(request, f"Evaluation job #{job.pk} is queued on the gpu queue.")
    return redirect(f"{reverse('progress')}?run={run.pk}")
