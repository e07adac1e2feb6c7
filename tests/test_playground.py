"""The playground page, driven in a real browser: headless Chromium (Debian's) through Playwright, against the API app
served on loopback with tiny models (a LoRA run, a second run over its base, the base, a classifier, a tagger).

Every test fails on any console error or uncaught page error the page itself causes, and on any request that leaves
the server (the page must work with the network off).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.helpers import SCHEMA, SYSTEM_PROMPT, LoopbackServer, http, prompted_copy, zeroed_adapter_copy

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect  # polls from Playwright's own world: the page's CSP forbids the eval wait_for_function uses
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/ensure_test_tools.sh installs it)")

KEY = "s3cret-key"
# What Chromium logs for a response with an error status: expected only where a test provokes an API error.
HTTP_ERROR_LOG = "Failed to load resource: the server responded with a status of"


@pytest.fixture(scope="module")
def playground(tiny_lora_run, tmp_path_factory, classifier, tagger_checkpoint):
    """json-run: a LoRA run with a system prompt and an answer schema; other: a second run over its base; base;
    tickets: a classifier; places: a tagger (CITY, PERSON). The API wants KEY."""
    from tuneforge.serve import build_app, load_engines

    folder = tmp_path_factory.mktemp("playground")
    schema_run = prompted_copy(tiny_lora_run, folder / "json-run")
    other = zeroed_adapter_copy(tiny_lora_run, folder / "other")
    engines = load_engines([schema_run, other, tagger_checkpoint])
    engines.classifiers[classifier.model_id] = classifier
    with LoopbackServer(build_app(engines, api_key=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM,
                                          args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, playground, request):
    """A fresh tab on the playground that records console errors, page errors and requests to anywhere else."""
    context = browser.new_context()
    outside: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(playground.url)
                  else (outside.append(route.request.url), route.abort()))
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    tab.goto(playground.url)
    yield tab
    provoked = request.node.get_closest_marker("api_errors") is not None
    assert [e for e in errors if not (provoked and e.startswith(HTTP_ERROR_LOG))] == []
    assert outside == []
    context.close()


def use_key(tab, key: str = KEY) -> None:
    tab.fill("#api-key", key)
    tab.click("#key-form button")
    tab.wait_for_selector("#models input")


def tick_only(tab, *model_ids: str) -> None:
    for box in tab.query_selector_all("#models input:not([disabled])"):
        box.set_checked(box.get_attribute("value") in model_ids)


def count_text_updates(tab) -> None:
    """Counts, per answer card, how often its text changed: more than once means the answer streamed in."""
    tab.evaluate("""() => {
        window.updates = {};
        new MutationObserver((changes) => {
            for (const change of changes) {
                const card = change.target.parentElement && change.target.parentElement.closest('[data-model]');
                if (card) window.updates[card.dataset.model] = (window.updates[card.dataset.model] || 0) + 1;
            }
        }).observe(document.body, {childList: true, subtree: true, characterData: true});
    }""")


def chat_api(url: str, model: str, **body) -> str:
    reply = http("POST", f"{url}/v1/chat/completions", json_body={"model": model, **body}, key=KEY).json()
    return reply["choices"][0]["message"]["content"]


def test_the_page_is_open_but_the_api_behind_it_needs_the_key(playground):
    page = http("GET", f"{playground.url}/")
    assert page.status_code == 200 and b"<title>tuneforge playground</title>" in page.body
    script = http("GET", f"{playground.url}/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "http" not in policy  # no other origin is allowed anywhere
    assert http("GET", f"{playground.url}/v1/models").status_code == 401
    assert http("GET", f"{playground.url}/ui/samples/json-run").status_code == 401
    assert http("GET", f"{playground.url}/ui/nothing").status_code == 401  # only the page's own files are open


@pytest.mark.api_errors
def test_a_wrong_key_shows_the_apis_error_line_and_the_right_one_lists_the_models(page):
    assert page.inner_text("#status") == "this server wants its API key: enter it above"  # asked, not refused
    page.fill("#api-key", "wrong")
    page.click("#key-form button")
    expect(page.locator("#status")).to_have_text(re.compile("^missing or wrong API key"))
    use_key(page)
    shown = {box.get_attribute("value") for box in page.query_selector_all("#models input")}
    assert shown == {"json-run", "other", "base", "tickets", "places"}
    assert "Traceback" not in page.content()


def test_two_models_stream_side_by_side_with_the_right_json_badge(page, playground):
    use_key(page)
    tick_only(page, "json-run", "base")
    page.fill("#prompt", "Say apple.")
    page.fill("#max-tokens", "4")
    page.select_option("#constrain", "pasted")  # 4 tokens cut {"word": ...} short: the badge must say invalid
    page.fill("#schema", json.dumps(SCHEMA))
    count_text_updates(page)
    page.click("#send")
    expect(page.locator("#answers [data-state=done]")).to_have_count(2, timeout=60_000)
    for model in ("json-run", "base"):
        card = page.locator(f"#answers [data-model='{model}']")
        expected = chat_api(playground.url, model, messages=[{"role": "system", "content": SYSTEM_PROMPT},
                                                             {"role": "user", "content": "Say apple."}],
                            max_tokens=4, response_format={"type": "json_schema",
                                                           "json_schema": {"name": "pasted", "schema": SCHEMA}})
        assert card.locator(".answer-text").inner_text() == expected
        with pytest.raises(json.JSONDecodeError):
            json.loads(expected)
        assert card.locator("[data-json]").get_attribute("data-json") == "invalid"
        assert card.locator("[data-stat=finish]").inner_text() == "finish: length"
        assert "ms" in card.locator("[data-stat=ttft]").inner_text()
        assert card.locator("[data-stat=tokens]").inner_text() == "4 tokens"
    updates = page.evaluate("window.updates")
    assert updates["json-run"] > 1 and updates["base"] > 1  # streamed in, not shown at the end


def test_the_runs_schema_constraint_gives_valid_json_to_every_model(page, playground):
    use_key(page)
    tick_only(page, "json-run", "base")
    assert page.input_value("#system") == SYSTEM_PROMPT  # prefilled from the run, sent to every model
    page.fill("#prompt", "Say pear.")
    page.fill("#max-tokens", "40")
    page.select_option("#constrain", "run")
    page.click("#send")
    expect(page.locator("#answers [data-state=done]")).to_have_count(2, timeout=60_000)
    for model in ("json-run", "base"):
        card = page.locator(f"#answers [data-model='{model}']")
        assert card.locator("[data-json]").get_attribute("data-json") == "valid"
        parsed = json.loads(card.locator(".answer-text").inner_text())
        assert set(parsed) == {"word"} and isinstance(parsed["word"], str)


def test_a_classifiers_bars_sum_to_one_and_the_top_bar_is_its_label(page):
    use_key(page)
    page.click("[data-mode=classify]")
    page.fill("#classify-text", "please refund my last invoice")
    page.click("#classify-form button")
    card = page.locator("#classify-results [data-model=tickets]")
    card.locator(".bar-row").first.wait_for()
    bars = {row.get_attribute("data-label"): float(row.get_attribute("data-probability"))
            for row in card.locator(".bar-row").all()}
    assert set(bars) == {"billing", "bug", "praise"}
    assert sum(bars.values()) == pytest.approx(1.0, abs=1e-4)
    assert card.locator("[data-predicted]").get_attribute("data-predicted") == max(bars, key=bars.get)


def test_a_taggers_highlighted_spans_are_those_of_v1_tag(page, playground):
    text = "Would June 12 work for a data migration session with Anika? It has to be in Austin."
    use_key(page)
    page.click("[data-mode=tag]")
    page.fill("#tag-text", text)
    page.click("#tag-form button")
    card = page.locator("#tag-results [data-model=places]")
    card.wait_for()
    shown = [(int(m.get_attribute("data-start")), int(m.get_attribute("data-end")), m.get_attribute("data-label"))
             for m in card.locator("mark").all()]
    tagged = http("POST", f"{playground.url}/v1/tag", json_body={"model": "places", "input": text},
                  key=KEY).json()["data"][0]["entities"]
    assert shown == [(e["start"], e["end"], e["label"]) for e in tagged]
    assert shown, "the tiny tagger finds no entity: the test would check nothing"
    for start, end, _ in shown:
        assert text[start:end] in card.inner_text()


@pytest.mark.api_errors
def test_a_prompt_over_the_context_shows_the_apis_error_line(page):
    use_key(page)
    tick_only(page, "json-run")
    page.fill("#prompt", "apple " * 3000)
    page.click("#send")
    error = page.locator("#answers [data-model='json-run'] .error")
    error.wait_for()
    assert "together over the model's context" in error.inner_text()
    assert "\n" not in error.inner_text().strip() and "Traceback" not in page.content()


def test_held_out_rows_step_through_with_the_expected_answer_beside_each_models(page, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Say apple."}, {"role": "assistant", "content": "apple"}]},
            {"prompt": "Say pear.", "completion": "{\"word\": \"pear\"}"}]
    source = tmp_path / "held_out.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    use_key(page)
    page.click("[data-mode=rows]")
    tick_only(page, "json-run", "base")
    page.set_input_files("#rows-file", str(source))
    expect(page.locator("#row-position")).to_have_text("row 1 of 2")
    page.click("#row-run")
    expect(page.locator("#row-answers [data-match]")).to_have_count(2, timeout=60_000)
    assert page.locator("#row-answers .expected .answer-text").inner_text() == "apple"
    for card in page.locator("#row-answers [data-model]").all():
        answer = card.locator(".answer-text").inner_text()
        assert card.locator("[data-match]").get_attribute("data-match") == ("yes" if answer == "apple" else "no")
    page.click("#row-next")
    assert page.inner_text("#row-position") == "row 2 of 2"
    page.click("#row-run")
    expect(page.locator("#row-answers [data-match]")).to_have_count(2, timeout=60_000)
    # a JSON reference is compared field by field: the `word` line is marked where it differs
    for card in page.locator("#row-answers [data-model]").all():
        if card.locator("[data-field]").count():
            field = card.locator("[data-field=word]")
            assert field.get_attribute("data-differs") == ("false" if field.inner_text() == 'word: "pear"' else "true")


@pytest.mark.api_errors
def test_a_bad_reference_file_is_one_line_naming_the_line(page, tmp_path):
    source = tmp_path / "broken.jsonl"
    source.write_text(json.dumps({"prompt": "Say apple.", "completion": "apple"}) + "\n{not json\n")
    use_key(page)
    page.click("[data-mode=rows]")
    page.set_input_files("#rows-file", str(source))
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("broken.jsonl line 2: not JSON")


def test_the_runs_validation_samples_load_as_reference_rows(page, playground):
    use_key(page)
    page.click("[data-mode=rows]")
    tick_only(page, "json-run")
    page.click("#rows-samples")
    expect(page.locator("#row-position")).to_have_text(re.compile("^row 1 of "))
    samples = http("GET", f"{playground.url}/ui/samples/json-run")  # keyless: refused
    assert samples.status_code == 401
    assert page.locator("#row-prompt .turn").count() >= 1
