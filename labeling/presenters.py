"""What the labeling page receives about a comparison: the text to judge and nothing
that reveals which policy version wrote which completion."""

from __future__ import annotations

from labeling.models import Comparison, Completion
from labeling.rendering import render_untrusted_markdown


def cut_off_at(completion: Completion) -> int | None:
    """For an answer cut at the token cap (not `ended`), how many tokens it has (None
    when it ended, or 0 when the count is not known): the page marks such an answer, so an
    annotator judges what was written rather than marking it down for stopping mid-word."""
    if completion.ended:
        return None
    if completion.token_ids:
        return len(completion.token_ids)
    return int(completion.generation_settings.get("max_new_tokens") or 0)


def comparison_for_annotator(comparison: Comparison) -> dict:
    prompt = comparison.prompt
    run = comparison.run
    return {
        "id": comparison.pk,
        # Which run the label is for, and its guidelines (sanitized like model output).
        "run": {"name": run.name, "guidelines_html": render_untrusted_markdown(run.guidelines)},
        "history": [
            {"role": turn["role"], "html": render_untrusted_markdown(turn["content"])} for turn in prompt.history
        ],
        "prompt_html": render_untrusted_markdown(prompt.text),
        "completions": [
            {"position": position, "html": render_untrusted_markdown(completion.text),
             "cut_off_at": cut_off_at(completion)}
            for position, completion in enumerate(comparison.ordered_completions())
        ],
    }


def comparison_as_text(comparison: Comparison) -> dict:
    """The same comparison for the REST API: raw text for scripts (served as JSON, never
    rendered), with the same things left out."""
    run = comparison.run
    return {
        "id": comparison.pk,
        "run": {"name": run.name, "guidelines": run.guidelines},
        "messages": comparison.prompt.messages,
        "completions": [
            {"position": position, "text": completion.text}
            for position, completion in enumerate(comparison.ordered_completions())
        ],
    }
