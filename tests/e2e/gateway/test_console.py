"""The web console and explanations end to end: real embedder, heads and gateway; the page driven in
real headless Chromium (Debian's `chromium` package through Playwright).

Screenshots of each view are kept under var/test-artifacts/console/ (git-ignored) for a look.
"""

from __future__ import annotations

import http.client
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.conftest import ROOT, skip_or_fail
from tests.e2e.gateway import test_gateway
from tests.e2e.gateway.test_gateway import start_gateway, stop

stack = test_gateway.stack  # the gateway tests' real stack (embedder + heads tickets/helpdesk + gateway), per module

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
SENTENCE = "I was charged twice this month"


def predict(url: str, model: str, text: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}/predict", json={"text": text}, timeout=10, **kw)


# -- explanations (HTTP) ------------------------------------------------------------------------------
def test_explain_is_the_drop_of_the_label_probability_without_each_word(stack):
    url = stack["url"]
    r = httpx.post(f"{url}/v1/models/tickets/explain", json={"text": SENTENCE}, headers={"x-request-id": "why-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["head"] == "tickets" and body["request_id"] == "why-1" and r.headers["x-request-id"] == "why-1"
    served = predict(url, "tickets", SENTENCE).json()
    assert body["label"] == served["predictions"][0]["label"] == "billing" and body["version"] == served["version"]
    assert body["probability"] == pytest.approx(served["predictions"][0]["probability"], abs=1e-5)
    assert [w["word"] for w in body["words"]] == SENTENCE.split()
    assert all(SENTENCE[w["start"]:w["end"]] == w["word"] for w in body["words"])
    # Each importance is what the served model says without that word (top_k covers all 3 labels).
    for w in body["words"]:
        rest = (SENTENCE[:w["start"]].rstrip() + " " + SENTENCE[w["end"]:].lstrip()).strip()
        top = {t["label"]: t["probability"] for t in predict(url, "tickets", rest).json()["predictions"][0]["top_k"]}
        assert w["importance"] == pytest.approx(body["probability"] - top["billing"], abs=1e-4), w
    strongest = max(body["words"], key=lambda w: w["importance"])
    assert strongest["importance"] > 0.01 and strongest["word"] in ("charged", "twice")


def test_explain_is_per_head_and_validates_its_input(stack):
    url, head_url = stack["url"], stack["heads"]["tickets"][1]
    direct = httpx.post(f"{head_url}/explain", json={"text": "refund"})
    assert direct.status_code == 200 and direct.json()["words"][0]["word"] == "refund"
    assert direct.json()["words"][0]["importance"] == pytest.approx(direct.json()["probability"] - 1 / 3, abs=1e-5)
    too_long = httpx.post(f"{url}/v1/models/tickets/explain", json={"text": "refund " * 65})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "text"
    assert "65 words exceed the limit of max_explain_words=64" in too_long.json()["error"]["message"]
    for payload, field in (({"text": "  "}, "text"), ({"texts": ["a"]}, "text"), ({"text": "a", "x": 1}, "x")):
        r = httpx.post(f"{url}/v1/models/tickets/explain", json=payload)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (payload, r.text)
    missing = httpx.post(f"{url}/v1/models/nope/explain", json={"text": "x"})
    assert missing.status_code == 404 and "tickets" in missing.json()["error"]["message"]
    spec = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/models/{name}/explain"]["post"]
    assert {"200", "401", "404", "422", "503"} <= set(spec["responses"])


# -- the page itself --------------------------------------------------------------------------------
def test_ui_is_served_by_the_gateway_with_a_strict_policy(stack):
    url = stack["url"]
    root = httpx.get(url + "/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui"
    page = httpx.get(url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the browser loads nothing from elsewhere
    for asset, kind in (("app.js", "javascript"), ("console.css", "text/css")):
        r = httpx.get(f"{url}/ui/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    # No way out of the static folder (raw path: httpx would normalise the dots away).
    conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=5)
    conn.request("GET", "/ui/static/../__init__.py")
    assert conn.getresponse().status == 404
    conn.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is absent: install the Debian packages chromium and chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser):
    """A fresh tab that may reach only the gateway on loopback; every other request, and every
    script error, fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    outside, errors = [], []

    def only_loopback(route):
        if urlparse(route.request.url).hostname == "127.0.0.1" or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.set_default_timeout(20_000)
    tab.expected_errors = []  # console errors a test provokes on purpose (a refused key logs a 401)
    yield tab
    context.close()
    assert not outside, f"the console tried to reach {outside}"
    unexpected = [e for e in errors if not any(x in e for x in tab.expected_errors)]
    assert not unexpected, f"errors in the page: {unexpected}"


def screenshot(tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_models_and_playground_show_real_predictions_and_explanations(stack, page):
    url = stack["url"]
    page.goto(url + "/")  # redirected to /ui
    page.wait_for_selector("#models-table tr[data-model='tickets']")
    listing = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    for name in ("tickets", "helpdesk"):
        row = page.locator(f"#models-table tr[data-model='{name}']")
        assert row.get_attribute("data-ready") == "true" and "ready" in row.inner_text()
        assert listing[name]["version"] in row.inner_text()
        assert sorted(row.locator(".chip").all_inner_texts()) == ["account", "billing", "technical"]
        assert f"{listing[name]['metrics']['accuracy'] * 100:.1f}%" in row.inner_text()
        if listing[name].get("drift") is not None:  # the drift flag of GET /v1/models
            assert row.locator(".badge").nth(1).inner_text() == ("flagged" if listing[name]["drift"]["flagged"] else "ok")
    screenshot(page, "models")

    page.click("nav a[data-view='playground']")
    assert page.locator("#model-choices input:checked").count() >= 2  # ready models are picked by default
    page.fill("#playground-text", SENTENCE)
    page.click("#classify")
    for name in ("tickets", "helpdesk"):
        card = page.locator(f"article.result[data-model='{name}'][data-state='done']")
        card.wait_for()
        assert card.get_attribute("data-label") == "billing"
        assert card.locator(".prediction .label").inner_text() == "billing"
        shown = [float(x) for x in card.locator(".topk li").evaluate_all("els => els.map(e => e.dataset.probability)")]
        assert len(shown) == 3 and shown == sorted(shown, reverse=True) and shown[0] > 0.34
    served = predict(url, "tickets", SENTENCE).json()["predictions"][0]
    tickets = page.locator("article.result[data-model='tickets']")
    assert float(tickets.locator(".topk li").first.get_attribute("data-probability")) == pytest.approx(
        served["probability"], abs=1e-5)

    tickets.locator("button.explain").click()
    tickets.locator(".highlighted .word").first.wait_for()
    words = tickets.locator(".highlighted .word")
    assert words.all_inner_texts() == SENTENCE.split()
    assert tickets.locator(".highlighted").inner_text() == SENTENCE  # the text, intact, with its words marked
    importances = [float(x) for x in words.evaluate_all("els => els.map(e => e.dataset.importance)")]
    explained = httpx.post(f"{url}/v1/models/tickets/explain", json={"text": SENTENCE}).json()
    assert importances == pytest.approx([w["importance"] for w in explained["words"]], abs=1e-6)
    strongest = words.nth(importances.index(max(importances)))
    assert strongest.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(230, 120, 20)"  # full strength
    screenshot(page, "playground")


def test_dashboard_charts_real_traffic(stack, page):
    url = stack["url"]
    before = httpx.get(f"{url}/v1/models/helpdesk/report").json()["summary"]
    texts = ["refund my double charge", "the app crashes on start", "I cannot log in", "invoice is wrong",
             "payment failed twice", "reset my password please", "screen stays black", "update my email"]
    replies = [predict(url, "helpdesk", t).json() for t in texts * 2]
    for _ in range(4):  # enough texts for the head's drift window (200 by default) to score
        batch = httpx.post(f"{url}/v1/models/helpdesk/predict", json={"texts": texts * 7}, timeout=30)
        assert batch.status_code == 200, batch.text
    sent = len(replies) + 4 * len(texts) * 7
    feedback = httpx.post(f"{url}/v1/models/helpdesk/feedback", json={"items": [
        {"prediction_id": r["prediction_id"], "label": r["predictions"][0]["label"]} for r in replies[:4]]})
    assert feedback.status_code == 200, feedback.text
    deadline = time.monotonic() + 20  # the inference log is written by a background thread
    while True:
        report = httpx.get(f"{url}/v1/models/helpdesk/report").json()
        if report["summary"]["texts"] >= before["texts"] + sent or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    summary = report["summary"]
    assert summary["texts"] >= before["texts"] + sent

    with page.expect_response(lambda r: "/v1/models/helpdesk/report?" in r.url) as answer:
        page.goto(url + "/ui#/dashboard/helpdesk")
    drawn = answer.value.json()["summary"]  # the page's own request: last 24 h up to the server's now
    assert drawn["texts"] == summary["texts"] and "until=" not in answer.value.url
    page.wait_for_selector("#dashboard:not([hidden]) #chart-volume[data-points]")
    assert page.locator("#dashboard-model").input_value() == "helpdesk"
    volume = page.locator("#chart-volume rect.bar")
    assert sum(float(v) for v in volume.evaluate_all("els => els.map(e => e.dataset.value)")) == summary["texts"]
    bars = page.locator("#chart-labels rect.bar")
    shown = dict(zip(bars.evaluate_all("els => els.map(e => e.dataset.label)"),
                     [int(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")]))
    assert shown == summary["label_distribution"] and set(shown) <= {"billing", "technical", "account"}
    histogram = [int(v) for v in page.locator("#chart-confidence rect.bar").evaluate_all(
        "els => els.map(e => e.dataset.value)")]
    assert histogram == summary["confidence_histogram"]["counts"] and sum(histogram) == summary["texts"]
    assert int(page.locator("#chart-latency").get_attribute("data-points")) >= 3  # p50, p95, p99 of this hour
    assert page.locator("#chart-latency circle.point[data-series='p95']").count() >= 1
    assert page.locator("#chart-accuracy rect.bar").count() >= 2  # the test set and live feedback
    assert summary["feedback"]["count"] >= 4
    live = page.locator("#chart-accuracy rect.bar").nth(1).get_attribute("data-value")
    assert float(live) == pytest.approx(report["versions"][0]["feedback"]["accuracy"] or 0, abs=1e-6)
    tiles = page.locator("#summary-tiles [data-tile='texts'] .value").inner_text()
    assert tiles.replace(",", "") == str(summary["texts"])
    drift, scores = page.locator("#chart-drift"), (report["drift"] or {}).get("scores") or {}
    if report["drift"] and report["drift"].get("available") and any(v is not None for v in scores.values()):
        shown = drift.locator("rect.bar").evaluate_all("els => els.map(e => e.dataset.value)")
        expected = [scores[k] for k in ("label_shift_js", "confidence_shift", "ood_rate") if k in scores]
        assert [float(v) for v in shown if v != ""] == pytest.approx([v for v in expected if v is not None])
    else:  # the drift API is not in this build, or the artifact has no reference: said, not drawn
        assert "drift" in drift.inner_text() and drift.locator("rect.bar").count() == 0
    # champion vs challengers and the audit log, from GET .../challengers and .../audit
    challengers = httpx.get(f"{url}/v1/models/helpdesk/challengers").json()
    page.wait_for_function("document.querySelector('#challengers-status').textContent.startsWith('champion ')")
    assert page.locator("#challengers-status").inner_text().startswith(f"champion {challengers['champion']}")
    rows = page.locator("#challengers-table tbody tr[data-version]")
    assert rows.evaluate_all("els => els.map(e => e.dataset.version)") == [c["version"] for c in
                                                                          challengers["challengers"]]
    assert page.locator("#audit-table tbody tr").count() >= 1  # entries, or the "no promotion yet" row
    screenshot(page, "dashboard")


def test_console_asks_for_a_key_and_keeps_it_in_the_tab_only(stack, page, tmp_path):
    from gateway.auth import hash_key

    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"name": "carol", "sha256": hash_key("carol-secret"), "models": ["*"]}]))
    proc, url = start_gateway(stack["heads_dir"], stack["routes"], stack["target"], "--api-keys-file", str(keys))
    sent = []
    page.on("request", lambda req: sent.append((req.url, req.headers.get("authorization"))))
    page.expected_errors = ["401"]
    try:
        assert httpx.get(url + "/ui").status_code == 200  # the page itself is public; its data is not
        page.goto(url + "/ui")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong-key")
        page.click("#key-submit")
        page.wait_for_selector("#key-dialog[open] >> text=The key was refused")
        screenshot(page, "key-dialog")
        page.fill("#key-input", "carol-secret")
        page.click("#key-submit")
        page.wait_for_selector("#models-table tr[data-model='tickets'][data-ready='true']")
        assert page.evaluate("sessionStorage.getItem('polyhead.apiKey')") == "carol-secret"
        assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
        page.click("nav a[data-view='playground']")
        page.fill("#playground-text", SENTENCE)
        page.click("#classify")
        card = page.locator("article.result[data-model='tickets'][data-state='done']")
        card.wait_for()
        assert card.get_attribute("data-label") == "billing"
        api_calls = [(u, auth) for u, auth in sent if "/v1/" in u]
        assert ("Bearer carol-secret" in {auth for _, auth in api_calls})
        assert all(auth == "Bearer carol-secret" for u, auth in api_calls if "predict" in u)
        assert all(auth is None for u, auth in sent if "/ui" in u)  # assets never carry the key
        page.click("#forget-key")
        page.wait_for_selector("#key-dialog[open]")  # forgotten: the next call asks again
        assert page.evaluate("sessionStorage.getItem('polyhead.apiKey')") is None
    finally:
        stop(proc)


def test_review_page_answers_with_keys_skips_and_undoes(stack, page):
    import sqlalchemy as sa

    from polyhead.inference_log.schema import make_engine

    url = stack["url"]
    for text in ["my invoice shows the wrong amount", "nothing happens when I press save", "locked out of my profile",
                 "refund for a cancelled order", "the mobile app freezes", "two charges for one order"]:
        assert predict(url, "tickets", text).status_code == 200
    deadline = time.monotonic() + 15  # the inference log is written by a background thread
    while httpx.get(f"{url}/v1/models/tickets/review", params={"n": 50}).json()["pool"] < 6:
        assert time.monotonic() < deadline, "the traffic did not reach the inference log"
        time.sleep(0.2)

    with page.expect_response(lambda r: "/v1/models/tickets/review?" in r.url) as answer:
        page.goto(url + "/ui#/review/tickets")
    queue = answer.value.json()
    assert queue["strategy"] == "uncertain" and len(queue["items"]) >= 3
    items, labels = queue["items"], queue["labels"]
    card = page.locator("#review-card:not([hidden])")
    card.wait_for()
    assert card.get_attribute("data-prediction-id") == items[0]["prediction_id"]
    page.locator("#review-text .word").first.wait_for()  # the explanation's highlights
    assert page.locator("#review-text").inner_text() == items[0]["text"]
    shown = [float(x) for x in page.locator("#review-topk li").evaluate_all("els => els.map(e => e.dataset.probability)")]
    assert shown == pytest.approx([t["probability"] for t in items[0]["top_k"]], abs=1e-9)
    assert page.locator("#review-labels button").all_inner_texts()[0].startswith(labels[0])
    assert not page.locator("#review-new-label").is_visible()  # a closed head: no free-text label
    screenshot(page, "review")

    progress = page.locator("#review-progress")

    def wait_progress(done: int, skipped: int):
        page.wait_for_selector(f"#review-progress[data-done='{done}'][data-skipped='{skipped}']")

    page.keyboard.press("1")  # the first label for the first text
    wait_progress(1, 0)
    assert card.get_attribute("data-prediction-id") == items[1]["prediction_id"]
    page.keyboard.press("s")  # skip the second
    wait_progress(1, 1)
    assert card.get_attribute("data-prediction-id") == items[2]["prediction_id"]
    page.keyboard.press("u")  # undo the skip: back to the second
    wait_progress(1, 0)
    assert card.get_attribute("data-prediction-id") == items[1]["prediction_id"]
    page.keyboard.press("2")
    wait_progress(2, 0)
    page.keyboard.press("u")  # undo the answer: back to it, shown as answered; a new answer replaces it
    page.wait_for_selector("#review-answer:has-text('answered: %s')" % labels[1])
    page.keyboard.press("3")
    page.wait_for_selector(f"#review-progress[data-left='{len(items) - 2}']")  # answered: on to the third
    assert (progress.get_attribute("data-done"), progress.get_attribute("data-skipped")) == ("2", "0")

    engine = make_engine(stack["db"])
    try:
        with engine.connect() as conn:
            stored = dict(conn.execute(sa.text(
                "select request_id, label || ':' || review_strategy from feedback where head = 'tickets'")).all())
    finally:
        engine.dispose()
    assert stored[items[0]["prediction_id"]] == f"{labels[0]}:uncertain"
    assert stored[items[1]["prediction_id"]] == f"{labels[2]}:uncertain"
    assert items[2]["prediction_id"] not in stored
    rep = httpx.get(f"{url}/v1/models/tickets/report").json()["review"]
    assert rep["by_strategy"]["uncertain"]["count"] == 2

    # The random slice: one answer, and the dashboard's live accuracy counts it (and only it).
    page.select_option("#review-strategy", "random")
    with page.expect_response(lambda r: "strategy=random" in r.url) as answer:
        page.click("#review-load")
    first = answer.value.json()["items"][0]
    page.wait_for_selector(f"#review-card[data-prediction-id='{first['prediction_id']}']")
    page.keyboard.press("1")
    page.wait_for_selector("#review-progress[data-done='1']")
    page.goto(url + "/ui#/dashboard/tickets")
    tile = page.locator("#summary-tiles [data-tile='live-random'] .value")
    tile.wait_for()
    correct = labels[0] == first["predicted"]
    assert tile.inner_text().startswith(f"{'100.0' if correct else '0.0'}% of 1")
