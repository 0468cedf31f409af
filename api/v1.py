"""Version 1 of the REST API: the NinjaAPI instance, its routers and its error format.

To add an endpoint, write a function in the router module of its area (api/routers/);
to add an area, write a module with a `router` (its `auth` is api.auth.person_token or
staff_token) and add it to ROUTERS. tests/test_api.py finds every route in the OpenAPI
schema and checks its tokens by itself."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Router, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError

from api.routers import (
    bakeoffs,
    datasets,
    exports,
    jobs,
    labels,
    outside_trainers,
    prompts,
    rounds,
    runs,
    webhooks,
)

ROUTERS: list[tuple[str, Router]] = [
    ("/labels", labels.router),
    ("/prompts", prompts.router),
    ("/exports", exports.router),
    ("/runs", runs.router),
    ("/runs", outside_trainers.router),
    ("/rounds", rounds.router),
    ("/jobs", jobs.router),
    ("/datasets", datasets.router),
    ("/bakeoffs", bakeoffs.router),
    ("/webhooks", webhooks.router),
]

DESCRIPTION = """Scripts and training pipelines talk to PrefLoop here. Send a personal
token in `Authorization: Bearer <key>` (make one at /account/tokens). Annotators' tokens
may take and submit labels; researchers' (staff) tokens may call everything. Refusals are
JSON: `{"error": "..."}`."""

api = NinjaAPI(
    title="PrefLoop API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api-v1",
    # Swagger UI from ninja's bundled static files (ninja in INSTALLED_APPS): no CDN, and
    # validatorUrl null, or Swagger UI would send the schema to validator.swagger.io.
    docs=Swagger(settings={"validatorUrl": None}),
    # The docs and the schema need a signed-in person, like every page; the endpoints
    # themselves answer tokens only.
    docs_decorator=login_required,
)
for prefix, router in ROUTERS:
    api.add_router(prefix, router)


def error_response(request: HttpRequest, message: str, status: int, **extra) -> HttpResponse:
    return api.create_response(request, {"error": message, **extra}, status=status)


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = error_response(
        request, "a valid API token is required: send 'Authorization: Bearer <key>' with a key that is not revoked "
                 "(make one at /account/tokens)", 401)
    response["WWW-Authenticate"] = 'Bearer realm="prefloop"'
    return response


@api.exception_handler(HttpError)
def refused(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(request, exc.message, exc.status_code)


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(request, "not found", 404)


@api.exception_handler(ValidationError)
def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return error_response(request, f"invalid request: {describe(exc.errors)}", 422, detail=exc.errors)


def describe(errors: list[dict]) -> str:
    """Every problem on one line: `body.new.name: Field required; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors)
