from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from experiments.models import Experiment
from experiments.results import experiment_charts, experiment_summary
from prefloop.access import staff_required
from training.models import Job


@staff_required
@require_GET
def experiments(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/list.html", {"experiments": Experiment.objects.select_related("created_by")})


@staff_required
@require_GET
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    """The design, the live jobs of its arms, the result table, the verdict and the curves."""
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    summary = experiment_summary(experiment)
    jobs = Job.objects.filter(run__experiment_arm__experiment=experiment).select_related(
        "requested_by", "round", "run")[:30]
    context = {"experiment": experiment, "summary": summary, "charts": experiment_charts(summary), "jobs": jobs,
               "arm_runs": experiment.arm_runs.select_related("run")}
    return render(request, "experiments/detail.html", context)
