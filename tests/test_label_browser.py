"""An annotator in a real browser (Debian chromium through Playwright)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from labeling.models import Label
from tests.conftest import ARTIFACT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def annotator_page(browser, live_server, people):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/label/")  # redirected to log in first
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "pw-ann-123")
    page.press("input[name=password]", "Enter")
    page.wait_for_url("**/label/")
    yield page
    context.close()


def prompt_is(page, text: str) -> None:
    expect(page.locator("#prompt")).to_have_text(text)


def test_annotator_labels_three_comparisons_with_the_keyboard_and_one_undo(annotator_page, make_comparison, people):
    page = annotator_page
    comparisons = [
        make_comparison(prompt=f"Question {i}", texts=(f"answer {i} one", f"answer {i} two"), priority=10 - i)
        for i in range(4)
    ]
    page.reload()
    prompt_is(page, "Question 0")
    page.keyboard.press("1")  # left
    prompt_is(page, "Question 1")
    page.keyboard.press("ArrowRight")  # right... then think better of it
    prompt_is(page, "Question 2")
    page.keyboard.press("u")
    prompt_is(page, "Question 1")
    page.keyboard.press("3")  # tie
    prompt_is(page, "Question 2")
    page.keyboard.press("e")  # much better
    page.keyboard.press("r")
    page.keyboard.type("clearer and shorter")
    page.keyboard.press("Escape")
    page.keyboard.press("2")  # right
    prompt_is(page, "Question 3")
    expect(page.locator("#labeled-count")).to_have_text("3")
    ARTIFACT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACT_DIR / "labeling-page.png"), full_page=True)

    labels = {label.comparison_id: label for label in Label.objects.filter(annotator=people.annotator)}
    assert set(labels) == {comparisons[0].pk, comparisons[1].pk, comparisons[2].pk}
    assert labels[comparisons[0].pk].choice == "a"
    assert labels[comparisons[1].pk].choice == "tie"
    last = labels[comparisons[2].pk]
    assert (last.choice, last.strength, last.rationale) == ("b", 3, "clearer and shorter")
    assert all(0 < label.active_seconds < 60 for label in labels.values())


def test_model_output_with_html_shows_as_text_and_runs_nothing(annotator_page, make_comparison, base_run):
    page = annotator_page
    attack_left = '<script>window.__xss = "script"</script>Hello'
    attack_right = '<img src=x onerror="window.__xss = \'img\'"> and [link](javascript:window.__xss=1)'
    make_comparison(prompt="Be nice <b onmouseover=\"window.__xss='prompt'\">bold</b>",
                    texts=(attack_left, attack_right))
    base_run.guidelines = "Prefer **short** answers. <img src=x onerror=\"window.__xss='guidelines'\">"
    base_run.save()
    page.reload()
    # The run's name and its guidelines, open for the first comparison of a run.
    expect(page.locator("#run-name")).to_have_text(base_run.name)
    expect(page.locator("#guidelines")).to_have_attribute("open", "")
    expect(page.locator("#guidelines-text strong")).to_have_text("short")
    expect(page.locator("#completions")).to_contain_text('<script>window.__xss = "script"</script>Hello')
    expect(page.locator("#completions")).to_contain_text("<img src=x onerror=")
    page.hover("#prompt")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#completions img, #completions script, #prompt b, #guidelines img").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    ARTIFACT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACT_DIR / "xss-as-text.png"), full_page=True)


def test_hostile_model_output_neither_breaks_the_page_nor_spills_out_of_its_card(annotator_page, make_comparison):
    """Nested list markers that crashed the renderer, a right-to-left override that
    flipped what people read, a table 2,000 columns wide, and a megabyte of text."""
    page = annotator_page
    wide_table = "|" + "column|" * 2000 + "\n|" + "-|" * 2000 + "\n|" + "cell|" * 2000
    make_comparison(prompt="- " * 500 + "deep prompt",
                    texts=("I agree \u202eyas ton did I\u202c." + "\n\n" + wide_table, "word " * 200_000))
    page.reload()
    expect(page.locator("#prompt")).to_contain_text("deep prompt")
    expect(page.locator("#completions")).to_contain_text("[U+202E]yas ton did I[U+202C]")
    expect(page.locator("#completions")).to_contain_text("Showing the first 100,000 of 1,000,000 characters")
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px window"
    first, second = (page.locator(".completion").nth(i).bounding_box() for i in range(2))
    assert first["x"] + first["width"] <= second["x"]  # the table scrolls inside its own card
    ARTIFACT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACT_DIR / "hostile-output.png"))
    page.keyboard.press("1")  # and the comparison can still be labeled
    expect(page.locator("#labeled-count")).to_have_text("1")


def test_narrow_screens_stack_the_completions(browser, annotator_page, make_comparison):
    page = annotator_page
    make_comparison(prompt="Narrow", texts=("left text", "right text"))
    page.set_viewport_size({"width": 420, "height": 900})
    page.reload()
    prompt_is(page, "Narrow")
    first, second = (page.locator(".completion").nth(i).bounding_box() for i in range(2))
    assert second["y"] > first["y"] + first["height"] - 1  # below, not beside


def test_three_completions_are_ranked_by_pressing_numbers_best_first(annotator_page, make_comparison, people):
    page = annotator_page
    comparison = make_comparison(prompt="Rank us", texts=("x", "y", "z"))
    page.reload()
    prompt_is(page, "Rank us")
    expect(page.locator("#pair-choices")).to_be_hidden()
    expect(page.locator("#ranking-choices")).to_be_visible()
    page.keyboard.press("3")
    expect(page.locator("#ranking-so-far")).to_have_text("3")
    page.keyboard.press("1")  # the last place is implied and the ranking is sent
    expect(page.locator("#labeled-count")).to_have_text("1")
    label = Label.objects.get(annotator=people.annotator, comparison=comparison)
    assert (label.choice, label.ranking) == ("ranking", [2, 0, 1])


def test_idle_time_and_hidden_tabs_do_not_count_as_active(annotator_page, make_comparison, people, settings):
    settings.PREFLOOP_IDLE_SECONDS = 1
    page = annotator_page
    first = make_comparison(prompt="Idle", priority=2)
    second = make_comparison(prompt="Hidden", priority=1)
    page.reload()
    prompt_is(page, "Idle")
    page.wait_for_timeout(3000)  # no input: only the first second counts
    page.keyboard.press("1")
    prompt_is(page, "Hidden")
    # The tab goes to the background for three seconds while the mouse keeps moving.
    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "hidden", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    for x in range(6):
        page.mouse.move(100 + x * 10, 100)
        page.wait_for_timeout(500)
    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "visible", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    page.keyboard.press("2")
    expect(page.locator("#empty")).to_be_visible()
    idle = Label.objects.get(comparison=first, annotator=people.annotator)
    hidden = Label.objects.get(comparison=second, annotator=people.annotator)
    assert 0.3 < idle.active_seconds < 2.0
    assert hidden.active_seconds < 1.0


def test_an_answer_cut_at_the_token_cap_is_marked_and_a_finished_one_is_not(annotator_page, make_comparison):
    from labeling.models import Completion

    page = annotator_page
    make_comparison(prompt="Cut", texts=("Taking breaks is also essential. A", "Rest often."))
    Completion.objects.filter(text__startswith="Taking breaks").update(ended=False, token_ids=list(range(48)))
    page.reload()
    prompt_is(page, "Cut")
    cut = page.locator(".completion", has_text="Taking breaks")
    expect(cut.locator(".cut-off")).to_have_text("✂ cut off at 48 tokens")
    expect(cut.locator(".cut-off")).to_have_attribute("aria-label", "This answer was cut off at 48 tokens: it did "
                                                                      "not finish.")
    expect(page.locator(".completion", has_text="Rest often.").locator(".cut-off")).to_have_count(0)
    ARTIFACT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACT_DIR / "cut-off-answer.png"))
