"""The page where each person makes and revokes their own API tokens."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from api import services
from api.forms import CreateTokenForm


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """GET lists the person's tokens; POST makes one and shows its key, this once (the
    page is rendered, not redirected to, so the key is never in a URL or a session)."""
    form = CreateTokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        try:
            _, new_key = services.create_token(request.user, form.cleaned_data["name"])
        except services.TokenError as error:
            form.add_error("name", str(error))
        else:
            form = CreateTokenForm()
    context = {"form": form, "new_key": new_key, "tokens": request.user.api_tokens.all()}
    response = render(request, "api/tokens.html", context, status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"  # the key must not linger in a cache
    return response


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    token = services.revoke_token(request.user, token_id)
    if token is None:
        messages.error(request, "No such token of yours.")
    else:
        messages.success(request, f"Revoked {token.name} ({token.prefix}…); it no longer works.")
    return redirect("api_tokens")
