"""Prompt files in, as on the import page: all or nothing. Researchers only."""

from __future__ import annotations

from django.conf import settings
from ninja import File, Router, Schema
from ninja.files import UploadedFile

from api.auth import staff_token
from api.schemas import Error
from labeling.importing import PromptFileError, import_prompt_file

router = Router(tags=["prompts"], auth=staff_token)


class ImportResult(Schema):
    created: int
    duplicates: int


@router.post("/import", response={200: ImportResult, 400: Error}, summary="Import a prompt file")
def import_prompts(request, file: File[UploadedFile]):
    """A multipart upload named `file`: JSONL (`{"prompt": ...}` or `{"messages": [...]}`
    per line, optional `category`) or CSV with a `prompt` column, told apart by the file
    name's extension. A bad line stores nothing; the error names the line. Prompts already
    present are counted in `duplicates`."""
    # One byte past the limit, so an oversized file is reported, not truncated.
    data = file.read(settings.PREFLOOP_MAX_IMPORT_BYTES + 1)
    try:
        result = import_prompt_file(file.name or "", data, settings.PREFLOOP_MAX_IMPORT_BYTES)
    except PromptFileError as error:
        return 400, {"error": f"Nothing was imported: {error}"}
    return {"created": result.created, "duplicates": result.duplicates}
