"""Response shapes shared by several routers."""

from __future__ import annotations

from ninja import Schema


class Error(Schema):
    """Every refusal: 400 (a service refused), 401 (no usable token), 403 (a researcher's
    endpoint), 404, 409 (a conflict with the queue), 422 (the request's shape; those also
    carry `detail`, a list of each problem; see api/v1.py)."""

    error: str


class SettingsError(Error):
    """Settings refused (400): `fields` names each setting with what is wrong with it
    ("method.learning_rate", "reward.heldout_fraction", "update_prompts"; "" for the
    settings as a whole), every problem of the request at once. A body of the wrong
    shape (a string for a number) is refused as every request is, with `detail`."""

    fields: dict[str, str] = {}
