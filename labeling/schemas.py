"""Request bodies of the labeling endpoints, declared once. The browser's JSON endpoints
(labeling/views.py) and the REST API (api/routers/labels.py) both validate a label with
`LabelIn`, so a body one accepts the other accepts too."""

from __future__ import annotations

import pydantic
from ninja import Schema
from pydantic import ConfigDict, Field, field_validator

from labeling.services import MAX_RATIONALE_CHARS, LabelError, LabelInput


class LabelIn(Schema):
    """One annotator's judgement on a comparison the queue gave them."""

    # NaN, Infinity and 1e400 (which JSON parsers read as infinity) are not numbers a
    # label can hold: refused here rather than stored.
    model_config = ConfigDict(allow_inf_nan=False)

    comparison_id: int
    choice: str = Field(description="a, b, tie, both_bad or skip for two completions; ranking, both_bad or skip "
                                    "for three or more")
    ranking: list[int] | None = Field(None, description="with choice=ranking: every position, best first")
    strength: int | None = Field(None, description="1, 2 or 3 (slightly, clearly, much better); only with a "
                                                   "preference")
    rationale: str | None = Field("", description=f"at most {MAX_RATIONALE_CHARS} characters")
    active_seconds: float | None = Field(0.0, description="time spent on it; clamped to 0..3600")

    @field_validator("rationale")
    @classmethod
    def refuse_nul(cls, value: str | None) -> str | None:
        # PostgreSQL cannot store NUL in text; SQLite can. One rule for both: refused.
        if value and "\x00" in value:
            raise ValueError("the rationale contains a NUL character")
        return value

    def to_label_input(self) -> LabelInput:
        return LabelInput(
            comparison_id=self.comparison_id,
            choice=self.choice,
            ranking=self.ranking,
            strength=self.strength,
            rationale=self.rationale or "",
            active_seconds=self.active_seconds or 0.0,
        )


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """The first problem, as a person reads it: `strength: Input should be a valid integer`."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def label_from_json(body: bytes) -> LabelInput:
    """A label from a request body, or LabelError: never a 500, whatever the bytes (the
    JSON parser refuses nesting deeper than it can hold)."""
    try:
        return LabelIn.model_validate_json(body).to_label_input()
    except pydantic.ValidationError as error:
        raise LabelError(f"malformed label: {describe_validation_error(error)}") from None
