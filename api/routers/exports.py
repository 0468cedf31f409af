"""Labels out, streamed as JSON Lines: one JSON object per line, written while the
database is read, so an export of any size starts at once and holds little memory.
Researchers only."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from ninja import Query, Router, Schema
from pydantic import Field

from api.auth import staff_token
from api.schemas import Error
from labeling import exporting

router = Router(tags=["exports"], auth=staff_token)


class RunChoice(Schema):
    run: str | None = Field(
        None, max_length=100,
        description=f"the run, by id or name, or `{exporting.ALL_RUNS}` for every run's labels; may be left out "
                    "only while there is one run (a 400 names the runs otherwise)")


def jsonl_response(raw: bool, choice: RunChoice):
    try:
        run = exporting.export_run(choice.run)
    except exporting.ExportRunError as error:
        return 400, {"error": str(error)}
    lines = exporting.jsonl_lines(exporting.export_rows(raw, run))
    return StreamingHttpResponse(lines, content_type="application/jsonl; charset=utf-8")


def jsonl_documented(description: str) -> dict:
    return {"responses": {200: {"description": description,
                                "content": {"application/jsonl": {"schema": {"type": "string"}}}}}}


@router.get("/preferences", summary="Export preferences for TRL",
            response={400: Error},
            openapi_extra=jsonl_documented("one `{prompt, chosen, rejected, chosen_ended, rejected_ended, run, "
                                           "run_id}` object per line (TRL's conversational preference format)"))
def export_preferences(request, choice: Query[RunChoice]):
    """A (chosen, rejected) pair per line; a ranking of K completions gives its K·(K−1)/2
    pairs; ties, both-bad and skips are left out. Loads with
    `datasets.load_dataset("json", data_files=...)`. Labels on bake-off comparisons (held-out
    evaluation prompts) and experiment arms' simulated labels are not exported here.
    `*_ended` is false for an answer cut off at the token cap."""
    return jsonl_response(False, choice)


@router.get("/labels", summary="Export every label",
            response={400: Error},
            openapi_extra=jsonl_documented("one label per line with its run, comparison, completions, annotator, "
                                           "timing, origin and source"))
def export_labels(request, choice: Query[RunChoice]):
    """Every label of the run, ties and skips included, with who gave it and how long it took."""
    return jsonl_response(True, choice)
