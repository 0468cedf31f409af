"""Staff pages: the list of webhooks (make one: its secret is shown once), a hook's page
with its delivery log, delete and test."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from prefloop.access import staff_required
from webhooks import services
from webhooks.forms import CreateWebhookForm
from webhooks.models import Webhook, WebhookDelivery

DELIVERIES_SHOWN = 50


@staff_required
def webhooks(request: HttpRequest) -> HttpResponse:
    """GET lists the hooks; POST makes one and shows its secret, this once (rendered, not
    redirected to, so the secret is in no URL or session)."""
    form = CreateWebhookForm(request.POST or None)
    created = secret = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            created, secret = services.create_webhook(request.user, data["name"], data["url"], data["events"],
                                                      data["run"], data["every_labels"] or 0)
        except services.WebhookError as error:
            form.add_error(None, str(error))
        else:
            form = CreateWebhookForm()
    context = {"form": form, "created": created, "secret": secret,
               "hooks": Webhook.objects.select_related("run").order_by("name", "pk")}
    response = render(request, "webhooks/list.html", context, status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"  # the secret must not linger in a cache
    return response


@staff_required
def webhook_detail(request: HttpRequest, hook_id: int) -> HttpResponse:
    hook = get_object_or_404(Webhook.objects.select_related("run"), pk=hook_id)
    deliveries = (hook.deliveries.select_related("event").prefetch_related("attempt_log")
                  .order_by("-created_at", "-pk")[:DELIVERIES_SHOWN])
    return render(request, "webhooks/detail.html", {"hook": hook, "deliveries": deliveries})


@staff_required
@require_POST
def delete_webhook(request: HttpRequest, hook_id: int) -> HttpResponse:
    hook = get_object_or_404(Webhook, pk=hook_id)
    services.delete_webhook(hook)
    messages.success(request, f"Deleted webhook {hook.name}; nothing more is sent to it.")
    return redirect("webhooks")


@staff_required
@require_POST
def test_webhook(request: HttpRequest, hook_id: int) -> HttpResponse:
    hook = get_object_or_404(Webhook, pk=hook_id)
    services.send_test_event(hook)
    messages.success(request, "A webhook.test event is on its way; its delivery is listed below.")
    return redirect("webhook_detail", hook_id=hook.pk)


@staff_required
@require_POST
def redeliver(request: HttpRequest, delivery_id: int) -> HttpResponse:
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id)
    if services.redeliver(delivery):
        messages.success(request, "The delivery is pending again, with fresh attempts.")
    else:
        messages.error(request, "Only a failed delivery can be sent again.")
    return redirect("webhook_detail", hook_id=delivery.webhook_id)
