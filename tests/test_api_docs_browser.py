"""The API docs in a real browser (Debian chromium through Playwright): Swagger UI runs
from our static files under our Content-Security-Policy and asks no other host."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from tests.test_api import ROUTES
from tests.test_label_browser import CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_docs_page_renders_every_route_from_our_own_files(live_server, people):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        hosts, problems = set(), []
        page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{live_server.url}/api/v1/docs")  # redirected to log in first
        page.fill("input[name=username]", "ann")
        page.fill("input[name=password]", "pw-ann-123")
        page.press("input[name=password]", "Enter")
        page.wait_for_url("**/api/v1/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("PrefLoop API")
        expect(page.locator(".opblock")).to_have_count(len(ROUTES))
        expect(page.locator(".swagger-ui button.authorize")).to_be_visible()
        browser.close()
    assert hosts == {urlparse(live_server.url).netloc}
    assert problems == []
