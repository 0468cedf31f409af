from __future__ import annotations

from django.urls import path

from webhooks import views

urlpatterns = [
    path("webhooks/", views.webhooks, name="webhooks"),
    path("webhooks/<int:hook_id>/", views.webhook_detail, name="webhook_detail"),
    path("webhooks/<int:hook_id>/delete", views.delete_webhook, name="webhook_delete"),
    path("webhooks/<int:hook_id>/test", views.test_webhook, name="webhook_test"),
    path("webhooks/deliveries/<int:delivery_id>/redeliver", views.redeliver, name="webhook_redeliver"),
]
