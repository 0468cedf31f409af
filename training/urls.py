from __future__ import annotations

from django.urls import path

from training import dataset_views, views

urlpatterns = [
    path("researcher/", views.researcher, name="researcher"),
    path("runs/new", views.create_run, name="create_run"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/rounds", views.start_round, name="start_round"),
    path("runs/<int:run_id>/generate", views.generate_comparisons, name="generate_comparisons"),
    path("runs/<int:run_id>/train-reward-model", views.train_reward_model, name="train_reward_model"),
    path("runs/<int:run_id>/pause", views.pause_run, name="pause_run"),
    path("runs/<int:run_id>/guidelines", views.save_guidelines, name="save_guidelines"),
    path("runs/<int:run_id>/evaluate", views.evaluate, name="evaluate"),
    path("runs/<int:run_id>/bakeoffs", views.start_bakeoff, name="start_bakeoff"),
    path("bakeoffs/<int:bakeoff_id>/", views.bakeoff_detail, name="bakeoff_detail"),
    path("bakeoffs/candidates/<int:candidate_id>/promote", views.promote_candidate, name="promote_candidate"),
    path("runs/<int:run_id>/datasets", dataset_views.run_datasets, name="run_datasets"),
    path("datasets/", dataset_views.datasets, name="datasets"),
    path("datasets/<int:dataset_id>/", dataset_views.dataset_detail, name="dataset_detail"),
    path("datasets/<int:dataset_id>/download", dataset_views.download_dataset, name="download_dataset"),
    path("runs/<int:run_id>/import-completions", views.import_completions, name="import_completions"),
    path("loop/stop", views.stop_loop, name="stop_loop"),
    path("loop/resume", views.resume, name="resume_loop"),
    path("jobs/<int:job_id>.json", views.job_status, name="job_status"),
    path("jobs/<int:job_id>/cancel", views.cancel_job, name="cancel_job"),
    path("progress/", views.progress, name="progress"),
    path("progress/rounds/<int:number>/", views.round_detail, name="round_detail"),
    path("progress/versions/<int:number>/", views.version_detail, name="version_detail"),
    path("progress/versions/<int:number>/branch", views.branch_run, name="branch_run"),
    path("progress/versions/<int:number>/download", views.download_policy, name="download_policy"),
    path("progress/workers.json", views.workers, name="workers"),
]
