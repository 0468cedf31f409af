"""Labels out, streamed as JSON Lines: one JSON object per line, written while the
database is read, so an export of any size starts at once and holds little memory.
Researchers only."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from ninja import Router

from api.auth import staff_token
from labeling import exporting

router = Router(tags=["exports"], auth=staff_token)


def jsonl_response(raw: bool) -> StreamingHttpResponse:
    lines = exporting.jsonl_lines(exporting.export_rows(raw))
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
    `datasets.load_dataset("json", data_files=...)`. Labels on bake-off comparisons (held-out
    evaluation prompts) and experiment arms' simulated labels are not exported here."""
    return jsonl_response(raw=False)


@router.get("/labels", summary="Export every label",
            openapi_extra=jsonl_documented("one label per line with its comparison, completions, annotator, "
                                           "timing, origin and source"))
def export_labels(request):
    """Every label, ties and skips included, with who gave it and how long it took."""
    return jsonl_response(raw=True)
