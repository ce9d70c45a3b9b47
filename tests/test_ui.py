"""The /ui page used as a person would: headless Chromium against a real `bentoml serve` on 127.0.0.1.

Needs Debian's `chromium` (`.ci/run` installs it where apt works) and the `playwright` package (the
`test` extra), which drives that browser through `executable_path` and never downloads one. Without
a browser the tests skip and say why. The screenshots are kept in test-artefacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import requests
from test_service_http import _env, _start, _stop  # the project's way to start and stop a real server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = REPO / "test-artefacts"
API_KEY = "ui-key-456"
MAX_BODY = 30_000  # small, so a long paste meets the 413 path
# Not English, so the tiny model (trained on English) leaves it unread: the page must mark it.
FOREIGN = "東京は台湾に関する首相の発言を撤回しないと述べた。"


def _browser_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = _browser_path()
    if path is None:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run does it where apt works)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (test extra) is missing")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_model):
    env = _env(tiny_model, STANCEWATCH_API_KEY=API_KEY, STANCEWATCH_MAX_BODY_BYTES=str(MAX_BODY))
    proc, url = _start([sys.executable, "-m", "stancewatch.cli", "serve"], env)
    yield url
    _stop(proc)


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    # Offline as far as the page can tell: any request that is not to this server fails the test.
    outside: list[str] = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(server)
            else (outside.append(route.request.url), route.abort())
        ),
    )
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(f"{server}/ui")
    yield p
    context.close()
    assert not outside, f"the page asked for outside resources: {outside}"
    assert not errors, f"JavaScript errors: {errors}"


def _paste(page, text: str) -> None:
    """What a paste does: focus the box, insert the text in one go (no key events per character)."""
    page.locator("#text").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)


def _screenshot(page, name: str) -> Path:
    ARTEFACTS.mkdir(exist_ok=True)
    path = ARTEFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_ui_is_served_without_a_key_and_loads_nothing_from_outside(server):
    r = requests.get(f"{server}/ui", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no fonts, no analytics
    assert requests.get(f"{server}/", timeout=10).status_code == 200  # Swagger UI stays at /


def test_pasted_article_shows_every_sentence_and_the_api_summary(page, server):
    article = (REPO / "examples" / "article-denial.txt").read_text(encoding="utf-8").rstrip() + "\n\n" + FOREIGN + "\n"
    page.fill("#key", API_KEY)
    _paste(page, article)
    page.click("#read")
    page.wait_for_selector("#article .s")
    want = requests.post(
        f"{server}/predict_document", json={"text": article}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ).json()
    spans = page.locator("#article .s")
    assert spans.count() == len(want["sentences"])
    assert page.locator("#article .s.labelled").count() == sum(s["supported"] for s in want["sentences"])
    assert page.locator("#article .s.unsupported").count() == sum(not s["supported"] for s in want["sentences"]) >= 1
    assert spans.all_inner_texts() == [s["text"] for s in want["sentences"]]
    assert page.locator("#article").inner_text().strip() == article.strip()  # the article as written
    assert page.locator("#message").inner_text() == ""

    targets = list(want["summary"])
    for t in targets:  # the summary panel is the API's summary
        for label, count in want["summary"][t]["counts"].items():
            cell = page.locator(f'.target-summary[data-target="{t}"] tr[data-label="{label}"]')
            assert cell.get_attribute("data-count") == str(count), (t, label)
    for i, t in enumerate(targets):  # the target switch recolours every sentence with that target's label
        page.click(f'#targets label[data-target="{t}"]')
        got = spans.evaluate_all("els => els.map(e => e.dataset.label)")
        assert got == [s["stances"][t]["label"] or "" for s in want["sentences"]], t
        if i == 0:
            assert page.locator(f'.target-summary[data-target="{t}"]').get_attribute("class").endswith("current")

    # Hover: the probabilities and the context sentence the model read it with.
    spans.nth(2).hover()
    tip = page.locator("#tip")
    assert tip.is_visible()
    assert f"“{want['sentences'][1]['text']}”" in tip.inner_text()
    for t in targets:
        label = want["sentences"][2]["stances"][t]["label"]
        assert f"{t}: {label}" in tip.inner_text()
    spans.last.hover()
    assert "not trained on this language" in tip.inner_text()
    spans.nth(2).hover()
    _screenshot(page, "ui-article.png")


def test_a_missing_key_a_too_large_and_an_empty_article_get_readable_messages(page):
    _paste(page, "Tokyo will not retract the remarks. Beijing demanded a correction.")
    page.click("#read")
    message = page.locator("#message")
    message.filter(has_text="API key").wait_for()
    assert "needs an API key" in message.inner_text() and page.locator("#article .s").count() == 0

    page.fill("#key", API_KEY)
    _paste(page, "The yen edged lower against the dollar on Monday. " * (MAX_BODY // 40))
    page.click("#read")
    message.filter(has_text="too large").wait_for()
    text = message.inner_text()
    assert "too large for this service" in text and str(MAX_BODY) in text
    _screenshot(page, "ui-413.png")

    _paste(page, "\u200b")  # not blank to the page or to validation, but no sentence: the service's 400
    page.click("#read")
    message.filter(has_text="could not read").wait_for()
    assert "could not read this article (text: the document contains no sentences)" in message.inner_text()


def test_a_txt_file_from_the_file_picker_is_read(page):
    path = REPO / "examples" / "editorial-pressure.txt"
    page.fill("#key", API_KEY)
    page.set_input_files("#file", str(path))
    page.locator("#message").filter(has_text="Loaded editorial-pressure.txt").wait_for()
    assert page.input_value("#text") == path.read_text(encoding="utf-8")
    page.click("#read")
    page.wait_for_selector("#article .s")
    assert page.locator("#article .s").count() > 5
