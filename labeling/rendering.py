"""Model output and imported prompts are untrusted text. They are rendered as Markdown
with raw HTML switched off (so `<script>` shows as the characters `<script>`), then
passed through the nh3 (ammonia) sanitizer as a second wall against anything Markdown
itself emits, such as a `javascript:` link.

Text can also attack the renderer and the reader, so rendering is bounded:
- markdown-it-py parses without recursion, in about linear time (a few kilobytes of
  unbalanced brackets took Python-Markdown seconds, growing quadratically; hundreds of
  nested list markers raised RecursionError). Its nesting limit silently drops
  everything below the limit, so text nested that deep is shown as plain text instead.
- Text longer than MAX_MARKDOWN_CHARS is shown as plain text, and only its first
  MAX_SHOWN_CHARS characters (a note says how much is hidden): a browser needs tens of
  seconds to lay out a megabyte, and no one judges an answer that long by reading it.
- Bidirectional override and isolate controls (U+202A–U+202E, U+2066–U+2069) are shown
  as visible markers: they can make an answer read differently from what it says.
- Each distinct text is rendered once per process (an LRU cache), not on every request.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"style"}, "td": {"style"}}
ALLOWED_STYLES = {"text-align"}

MAX_NESTING = 20
"""Blocks nested deeper than this (lists, quotes) make the whole text plain."""
MAX_MARKDOWN_CHARS = 50_000
"""Longer text is shown as plain text (markdown-it renders 50k pathological characters in ~0.5 s)."""
MAX_SHOWN_CHARS = 100_000

BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")

_markdown = MarkdownIt("commonmark", {"html": False, "maxNesting": MAX_NESTING}).enable("table")


def visible_bidi_controls(text: str) -> str:
    return BIDI_CONTROLS.sub(lambda match: f"[U+{ord(match.group()):04X}]", text)


def plain_text_html(text: str) -> str:
    """Escaped text, line breaks kept, and a note when part of it is not shown."""
    shown = text[:MAX_SHOWN_CHARS]
    html = f'<div class="plain-text">{escape(shown)}</div>'
    if len(text) > len(shown):
        html += (f'<p class="cut-note">Showing the first {len(shown):,} of {len(text):,} characters; '
                 "the rest is stored but not shown.</p>")
    return html


def markdown_html(text: str) -> str | None:
    """Sanitized Markdown HTML, or None when the text nests too deep to render whole."""
    tokens = _markdown.parse(text)
    if any(token.level >= MAX_NESTING - 1 for token in tokens):
        return None  # markdown-it stopped at its limit and dropped what was below
    html = _markdown.renderer.render(tokens, _markdown.options, {}).strip()
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer nofollow", filter_style_properties=ALLOWED_STYLES)


@lru_cache(maxsize=4096)
def render_untrusted_markdown(text: str) -> str:
    """Safe HTML for a prompt or completion; never raises on any string."""
    text = visible_bidi_controls(text)
    if len(text) <= MAX_MARKDOWN_CHARS:
        try:
            html = markdown_html(text)
        except Exception:  # a parser bug must not take a page down: show the text as it is
            html = None
        if html is not None:
            return html
    return plain_text_html(text)
