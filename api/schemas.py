"""Response shapes shared by several routers."""

from __future__ import annotations

from ninja import Schema


class Error(Schema):
    """Every refusal: 400 (a service refused), 401 (no usable token), 403 (a researcher's
    endpoint), 404, 409 (a conflict with the queue), 422 (the request's shape; those also
    carry `detail`, a list of each problem; see api/v1.py)."""

    error: str
