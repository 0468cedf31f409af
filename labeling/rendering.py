"""Model output is untrusted text. It is rendered as Markdown with raw HTML switched off
(so `<script>` shows as the characters `<script>`), then passed through the nh3
(ammonia) sanitizer as a second wall against anything Markdown itself emits, such as a
`javascript:` link."""

from __future__ import annotations

import re

import markdown
import nh3

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}}


FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)


def close_open_fence(text: str) -> str:
    """A completion cut at the token limit often stops inside a code block; closing the
    fence keeps the code a code block (lines intact) instead of one run-on paragraph."""
    fences = FENCE.findall(text)
    return f"{text}\n{fences[-1]}" if len(fences) % 2 else text


def render_untrusted_markdown(text: str) -> str:
    """Safe HTML for a prompt or completion."""
    text = close_open_fence(text)
    md = markdown.Markdown(extensions=["fenced_code", "tables", "sane_lists"], output_format="html")
    # Raw HTML, block and inline, is escaped instead of passed through.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    html = md.convert(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
