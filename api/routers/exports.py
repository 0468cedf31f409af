"""Labels out, streamed as JSON Lines: one JSON object per line, written while the
database is read, so an export of any size starts at once and holds little memory.
Researchers only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from django.http import StreamingHttpResponse
from ninja import Router

from api.auth import staff_token
from labeling import exporting

router = Router(tags=["exports"], auth=staff_token)


def jsonl_response(rows: Callable[[Iterable], Iterator[dict]]) -> StreamingHttpResponse:
    lines = exporting.jsonl_lines(rows(exporting.labels_for_export().iterator(100)))
    return StreamingHttpResponse(lines, content_type="application/jsonl; charset=utf-8")


def jsonl_documented(description: str) -> dict:
    return {"responses": {200: {"description": description,
                                "content": {"application/jsonl": {"schema": {"type": "string"}}}}}}


@router.get("/preferences", summary="Export preferences for TRL",
            openapi_extra=jsonl_documented("one `{prompt, chosen, rejected}` object per line (TRL's "
                                           "conversational preference format)"))
def export_preferences(request):
    """A (chosen, rejected) pair per line; a ranking of K completions gives its K·(K−1)/2
    pairs; ties, both-bad and skips are left out. Loads with
    `datasets.load_dataset("json", data_files=...)`."""
    return jsonl_response(exporting.preference_rows)


@router.get("/labels", summary="Export every label",
            openapi_extra=jsonl_documented("one label per line with its comparison, completions, annotator, "
                                           "timing and origin"))
def export_labels(request):
    """Every label, ties and skips included, with who gave it and how long it took."""
    return jsonl_response(exporting.raw_rows)
