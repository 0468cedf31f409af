from __future__ import annotations

import time

from labeling.rendering import MAX_MARKDOWN_CHARS, MAX_SHOWN_CHARS, render_untrusted_markdown


def test_script_tags_become_visible_text():
    html = render_untrusted_markdown("Hello <script>alert(1)</script> world")
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_event_handler_attributes_never_survive():
    html = render_untrusted_markdown('<img src=x onerror="alert(1)">\n\n<div onclick="x()">hi</div>')
    assert "<img" not in html and "<div" not in html
    assert "&lt;img" in html


def test_javascript_links_lose_their_target():
    html = render_untrusted_markdown("[click](javascript:alert(1)) and [ok](https://example.org)")
    assert html.count("<a ") == 1 and "href=\"javascript" not in html  # shown as the text it is
    assert 'href="https://example.org"' in html


def test_markdown_and_code_render():
    html = render_untrusted_markdown("Use **bold**.\n\n```python\nif a < b and c > d:\n    print('<b>')\n```")
    assert "<strong>bold</strong>" in html
    assert "<pre><code" in html
    assert "if a &lt; b and c &gt; d:" in html
    assert "&lt;b&gt;" in html


def test_code_cut_off_at_the_token_limit_still_renders_as_code():
    html = render_untrusted_markdown("Here:\n\n```python\ndef f(x):\n    return x < 1")
    assert "<pre><code" in html
    assert "def f(x):\n    return x &lt; 1" in html
    closed = render_untrusted_markdown("```\na\n```\n\ntext")
    assert closed.count("<pre>") == 1 and "<p>text</p>" in closed


# Text that attacks the renderer or the reader (issue 12): each of these took a page down
# or hung a web thread with Python-Markdown.

def test_hundreds_of_nested_list_markers_render_whole_as_plain_text():
    deep = "- " * 500 + "the end"
    html = render_untrusted_markdown(deep)  # was RecursionError
    assert "the end" in html and 'class="plain-text"' in html
    indented = "".join("  " * i + f"- item {i}\n" for i in range(300))
    html = render_untrusted_markdown(indented)
    assert "item 0" in html and "item 299" in html  # nothing below the nesting limit is dropped


def test_shallow_nesting_still_renders_as_markdown():
    html = render_untrusted_markdown("- a\n  - b\n    - c\n\n> quote\n> > inner")
    assert html.count("<ul>") == 3 and html.count("<blockquote>") == 2


def test_unbalanced_brackets_cost_about_linear_time():
    """Python-Markdown grew quadratically (seconds for a few kilobytes); a ratio between
    two sizes in one run is what is asserted, not a time."""

    def seconds(size: int) -> float:
        started = time.perf_counter()
        html = render_untrusted_markdown.__wrapped__("[" * size + "x")  # bypass the cache
        assert html.count("[") == size
        return time.perf_counter() - started

    seconds(2_000)  # warm up
    small = min(seconds(8_000) for _ in range(2))
    large = min(seconds(32_000) for _ in range(2))
    assert large / small < 10, f"4x the text took {large / small:.1f}x the time"  # quadratic: 16x


def test_very_long_text_is_shown_as_plain_text_with_a_note():
    text = "word " * 240_000  # 1.2 MB
    html = render_untrusted_markdown(text)
    assert 'class="plain-text"' in html and len(html) < 2 * MAX_SHOWN_CHARS
    assert f"Showing the first {MAX_SHOWN_CHARS:,} of {len(text):,} characters" in html
    just_over = "<b>x</b> " * (MAX_MARKDOWN_CHARS // 9 + 1)
    html = render_untrusted_markdown(just_over)
    assert "<b>" not in html and "&lt;b&gt;" in html  # plain text is escaped too


def test_bidi_overrides_are_shown_not_obeyed():
    html = render_untrusted_markdown("I agree \u202eyas ton did I\u202c and \u2067isolated\u2069.")
    assert "\u202e" not in html and "\u2067" not in html
    assert "[U+202E]yas ton did I[U+202C]" in html and "[U+2067]isolated[U+2069]" in html


def test_tables_keep_their_alignment_and_nothing_else():
    html = render_untrusted_markdown("| a | b |\n|--:|:-:|\n| 1 | 2 |")
    assert '<td style="text-align:right">1</td>' in html
    html = render_untrusted_markdown('| a |\n|---|\n| <span style="position:fixed">x</span> |')
    assert "<span" not in html and "&lt;span" in html


def test_each_text_is_rendered_once():
    render_untrusted_markdown.cache_clear()
    for _ in range(3):
        render_untrusted_markdown("**cached**")
    assert render_untrusted_markdown.cache_info().hits == 2
