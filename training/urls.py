from __future__ import annotations

from django.urls import path

from training import views

urlpatterns = [
    path("researcher/", views.researcher, name="researcher"),
    path("researcher/generate", views.generate_comparisons, name="generate_comparisons"),
    path("researcher/train-reward-model", views.train_reward_model, name="train_reward_model"),
    path("researcher/run-round", views.run_round, name="run_round"),
    path("loop/stop", views.stop_loop, name="stop_loop"),
    path("loop/resume", views.resume_loop, name="resume_loop"),
    path("jobs/<int:job_id>.json", views.job_status, name="job_status"),
    path("progress/", views.progress, name="progress"),
    path("progress/rounds/<int:number>/", views.round_detail, name="round_detail"),
    path("progress/versions/<int:number>/", views.version_detail, name="version_detail"),
    path("progress/workers.json", views.workers, name="workers"),
    path("progress/evaluate", views.evaluate, name="evaluate"),
]
