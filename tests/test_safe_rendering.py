from __future__ import annotations

from labeling.rendering import render_untrusted_markdown


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
    assert "javascript:" not in html
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
