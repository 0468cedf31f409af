from __future__ import annotations

from django.urls import path

from labeling import views

urlpatterns = [
    path("", views.home, name="home"),
    path("label/", views.label_page, name="label"),
    path("me/", views.me, name="me"),
    path("label/api/next", views.next_comparison, name="label_next"),
    path("label/api/submit", views.submit_label, name="label_submit"),
    path("label/api/undo", views.undo_label, name="label_undo"),
    path("prompts/import/", views.import_prompts, name="import_prompts"),
    path("export/labels.jsonl", views.export_labels, name="export_labels"),
]
