from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from labeling.models import Comparison, Label, Prompt
from prefloop.access import staff_required
from training import reports, services
from training.forms import GenerateComparisonsForm, StopLoopForm
from training.models import Job, PolicyVersion, RewardModelVersion, Round
from training.services.workers import worker_status


@staff_required
@require_GET
def researcher(request: HttpRequest) -> HttpResponse:
    context = {
        "generate_form": GenerateComparisonsForm(),
        "jobs": Job.objects.select_related("requested_by", "round")[:20],
        "policies": PolicyVersion.objects.annotate(completion_count=Count("completions")),
        "reward_models": RewardModelVersion.objects.order_by("-number")[:20],
        "labels_since_reward_model": services.labels_since_latest_reward_model(),
        "rounds": Round.objects.select_related("policy_before", "policy_after", "reward_model")[:20],
        "auto_loop": settings.PREFLOOP_AUTO_LOOP,
        "loop_min_labels": settings.PREFLOOP_LOOP_MIN_LABELS,
        "prompt_count": Prompt.objects.count(),
        "comparison_count": Comparison.objects.count(),
        "label_count": Label.objects.exclude(choice=Label.Choice.SKIP).count(),
    }
    return render(request, "training/researcher.html", context)


@staff_required
@require_POST
def generate_comparisons(request: HttpRequest) -> HttpResponse:
    form = GenerateComparisonsForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Not started: {form.errors.as_text()}")
        return redirect("researcher")
    job = services.request_generation(
        form.cleaned_data["policy"], form.cleaned_data["prompt_count"], request.user, form.cleaned_data["samples"]
    )
    messages.success(request, f"Queued generation job #{job.pk} on the gpu queue.")
    return redirect("researcher")


@staff_required
@require_GET
def job_status(request: HttpRequest, job_id: int) -> JsonResponse:
    job = get_object_or_404(Job, pk=job_id)
    return JsonResponse(
        {"id": job.pk, "status": job.status, "step": job.step, "total_steps": job.total_steps,
         "progress": job.progress, "eta_seconds": job.eta_seconds, "error": job.error}
    )


@staff_required
@require_POST
def train_reward_model(request: HttpRequest) -> HttpResponse:
    job = services.request_reward_training(requested_by=request.user)
    messages.success(request, f"Reward-model training job #{job.pk} is queued on the train queue.")
    return redirect("researcher")


@staff_required
@require_POST
def run_round(request: HttpRequest) -> HttpResponse:
    kind = Round.Kind.FULL if request.POST.get("kind") == Round.Kind.FULL else Round.Kind.PPO
    try:
        round_ = services.start_round(kind, requested_by=request.user)
    except services.RoundError as error:
        messages.error(request, f"Not started: {error}")
    else:
        messages.success(request, f"Started {round_} ({round_.get_kind_display().lower()}).")
    return redirect("researcher")


@login_required
@require_POST
def stop_loop(request: HttpRequest) -> HttpResponse:
    """Every signed-in person, annotators included, can stop the loop."""
    form = StopLoopForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    services.pause_loop(request.user, reason)
    messages.warning(request, "The loop is stopped: no new round starts until a researcher resumes it.")
    return redirect(request.POST.get("next") if request.POST.get("next") in ("/label/", "/researcher/") else "home")


@staff_required
@require_POST
def resume_loop(request: HttpRequest) -> HttpResponse:
    services.resume_loop()
    messages.success(request, "The loop is running again.")
    return redirect("researcher")


@staff_required
@require_GET
def progress(request: HttpRequest) -> HttpResponse:
    context = {**reports.dashboard(), "jobs": Job.objects.select_related("requested_by", "round")[:10]}
    return render(request, "training/progress.html", context)


@staff_required
@require_GET
def round_detail(request: HttpRequest, number: int) -> HttpResponse:
    round_ = get_object_or_404(Round.objects.select_related("policy_before", "policy_after", "reward_model"),
                               number=number)
    return render(request, "training/round.html", reports.round_page(round_))


@staff_required
@require_GET
def version_detail(request: HttpRequest, number: int) -> HttpResponse:
    version = get_object_or_404(PolicyVersion.objects.select_related("parent"), number=number)
    return render(request, "training/version.html", reports.version_page(version))


@staff_required
@require_GET
def workers(request: HttpRequest) -> JsonResponse:
    return JsonResponse(worker_status())


@staff_required
@require_POST
def evaluate(request: HttpRequest) -> HttpResponse:
    job = services.request_evaluation(requested_by=request.user)
    messages.success(request, f"Evaluation job #{job.pk} is queued on the gpu queue.")
    return redirect("progress")
