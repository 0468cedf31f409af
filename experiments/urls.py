from __future__ import annotations

from django.urls import path

from experiments import views

urlpatterns = [
    path("experiments/", views.experiments, name="experiments"),
    path("experiments/<int:experiment_id>/", views.experiment_detail, name="experiment_detail"),
]
