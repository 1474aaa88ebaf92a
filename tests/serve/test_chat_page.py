"""The browser chat page of `gptkit serve` (GET /): plain HTTP checks, then a real headless Chromium driving the page
against real servers on loopback.

The servers serve a tiny character model pretrained for a few hundred steps in the test (so that greedy replies are
printable text), or a random wider one where a reply must run for seconds (Stop, request timeout). The expected
reply of each browser turn is what the same server's /v1/chat/completions answers, unstreamed, for the request the
page sent; the request itself is read on the server side by an ASGI wrapper that records each chat request body.

The browser tests need Debian's chromium and chromedriver (/usr/bin); without them they are skipped.
Selenium Manager never runs: the driver's path is given.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI
from test_serve import make_model, running, wait_for

import gptkit
from gptkit.errors import GptkitError
from gptkit.serve.app import create_app
from gptkit.serve.engine import EngineConfig
from gptkit.serve.web import chat_page_routes, mount_chat_page

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "sekret"
PRETRAIN_FLAGS = ("--max-iters", "300", "--eval-interval", "300", "--learning-rate", "1e-2", "--model.n-layer", "1",
                  "--model.n-head", "2", "--model.n-embd", "32", "--model.block-size", "256", "--batch-size", "4",
                  "--sample-tokens", "0")


class RecordChatRequests:
    """An ASGI wrapper that keeps the JSON body of every POST /v1/chat/completions (as the server received it)."""

    def __init__(self, app) -> None:
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(b"".join(chunks)))
            return message

        await self.app(scope, recording, send)


# --- servers -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm(tmp_path_factory, run_cli, prepared_char):
    out = tmp_path_factory.mktemp("chat_page") / "run"
    run_cli("pretrain", "--data", str(prepared_char), "--out", str(out), *PRETRAIN_FLAGS)
    return gptkit.load(out)


@pytest.fixture(scope="module")
def plain(llm):
    """The tiny model's server, with its chat requests recorded: (base URL, recorder)."""
    recorder = RecordChatRequests(create_app(llm.model, llm.tokenizer, model_name="tiny"))
    with running(recorder) as base:
        yield base, recorder


@pytest.fixture(scope="module")
def keyed(llm):
    with running(create_app(llm.model, llm.tokenizer, model_name="tiny", api_key=KEY)) as base:
        yield base


@pytest.fixture(scope="module")
def slow_model(llm):
    # Random and wider, with a long context: a greedy reply runs to max_tokens, 4,000 tokens take seconds. Seed 1:
    # its greedy reply is visible text ("2222..."; other seeds' replies decode to nothing), so chunks show up.
    return make_model(llm.tokenizer.vocab_size, block_size=4096, n_layer=4, n_embd=128, seed=1)


def greedy_reply(base: str, body: dict, headers: dict | None = None) -> str:
    """What the server answers, unstreamed, for this chat request."""
    response = httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


# --- plain HTTP ------------------------------------------------------------------------------------------------

def test_page_and_assets_load_without_the_api_key(keyed):
    page = httpx.get(f"{keyed}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>gptkit chat · tiny</title>" in page.text
    assert '<script src="chat.js"' in page.text and 'href="chat.css"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name, kind in (("chat.js", "text/javascript"), ("chat.css", "text/css")):
        asset = httpx.get(f"{keyed}/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind) and len(asset.text) > 500
    assert httpx.get(f"{keyed}/v1/models").status_code == 401  # the API itself still needs the key
    assert httpx.get(f"{keyed}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    paths = httpx.get(f"{keyed}/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in paths and not {"/", "/chat.js", "/chat.css"} & set(paths)
    assert 'gptkit_requests_total{endpoint="/",status="200"}' in httpx.get(f"{keyed}/metrics").text


def test_any_fastapi_app_can_serve_the_page():
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})  # what `running` waits for
    mount_chat_page(app, title="<Shop> & help")
    app.include_router(chat_page_routes("Second", api_base="/api/v1/"), prefix="/chat")
    with running(app) as base:
        page = httpx.get(f"{base}/").text
        assert "<h1 id=\"title\">&lt;Shop&gt; &amp; help</h1>" in page and "<Shop>" not in page
        assert '<meta name="gptkit-api-base" content="v1">' in page
        second = httpx.get(f"{base}/chat/").text
        assert "<title>Second</title>" in second and 'content="/api/v1"' in second
        assert httpx.get(f"{base}/chat/chat.js").status_code == 200
    with pytest.raises(GptkitError, match="api_base"):
        chat_page_routes(api_base="https://elsewhere.example/v1")
    with pytest.raises(GptkitError, match="title"):
        chat_page_routes(title=" ")


# --- the browser -------------------------------------------------------------------------------------------------

PAGE_STATE = """
const text = (box) => box.querySelector('.content').textContent;
const error = document.getElementById('error');
let stored = null;
try { stored = JSON.parse(localStorage.getItem('gptkit-chat:' + location.pathname)); } catch (e) {}
return {
  messages: [...document.querySelectorAll('#messages .message')].map((box) => ({
    role: box.dataset.role, text: text(box), state: box.dataset.state || null,
    chunks: Number(box.dataset.chunks || 0), elements: box.querySelector('.content').children.length,
    note: (box.querySelector('.note') || {}).textContent || null})),
  error: error.hidden ? null : error.textContent,
  input: document.getElementById('input').value,
  models: [...document.getElementById('model').options].map((o) => o.value),
  stored: stored && stored.history,
  sendDisabled: document.getElementById('send').disabled,
};
"""


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.TemporaryDirectory(prefix="gptkit-chrome-")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile.name}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for script and CSP errors
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def state(driver) -> dict:
    return driver.execute_script(PAGE_STATE)


def wait_until(driver, condition, what: str, timeout: float = 30) -> dict:
    """Poll the page's state until `condition(state)` holds; fail naming `what` and the last state."""
    deadline = time.time() + timeout
    while True:
        now = state(driver)
        if condition(now):
            return now
        assert time.time() < deadline, f"timed out waiting for {what}; page state: {now}"
        time.sleep(0.05)


def open_page(driver, base: str, models: bool = True) -> dict:
    driver.get(f"{base}/")
    if models:
        return wait_until(driver, lambda s: s["models"] == ["tiny"], "the model list")
    return wait_until(driver, lambda s: s["error"] is not None, "an error")


def fill(driver, field_id: str, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("id", field_id)
    field.clear()
    field.send_keys(value + Keys.TAB)  # leaving the field fires its change event (settings are saved)


def say(driver, text: str) -> dict:
    """Type `text`, press Send, and wait until the reply has finished (or failed); returns the page state."""
    before = len(state(driver)["messages"])
    driver.find_element("id", "input").send_keys(text)
    driver.find_element("id", "send").click()
    return wait_until(driver, lambda s: len(s["messages"]) >= before + 2
                      and s["messages"][-1]["state"] not in (None, "streaming"), "the reply")


def test_streamed_reply_system_prompt_history_and_local_assets(browser, plain):
    base, recorder = plain
    open_page(browser, base)
    fill(browser, "temperature", "0")
    fill(browser, "top-p", "0.9")
    fill(browser, "max-tokens", "12")

    # The first turn, with markup in the message: shown as text, never parsed as HTML.
    first = '<img src=x onerror="window.pwned=1"><b>Good</b> morrow'
    page = say(browser, first)
    user, reply = page["messages"][-2:]
    assert user == {"role": "user", "text": first, "state": "done", "chunks": 0, "elements": 0, "note": None}
    assert browser.execute_script("return window.pwned === undefined && !document.querySelector('#messages img')")
    sent = recorder.bodies[-1]
    assert sent == {"model": "tiny", "messages": [{"role": "user", "content": first}], "stream": True,
                    "temperature": 0, "top_p": 0.9, "max_tokens": 12}
    expected = greedy_reply(base, sent)
    assert reply["text"] == expected and expected.strip() and reply["state"] == "done" and reply["elements"] == 0
    assert reply["chunks"] >= 1  # shown as the events came (several of them: see the Stop test)
    assert page["error"] is None and not page["sendDisabled"]

    # The second turn: the system prompt typed in the panel opens the request, and the history follows it.
    fill(browser, "system", "Speak verse, as Romeo would.")
    page = say(browser, "Who is there?")
    sent = recorder.bodies[-1]
    assert sent["messages"] == [{"role": "system", "content": "Speak verse, as Romeo would."},
                                {"role": "user", "content": first}, {"role": "assistant", "content": expected},
                                {"role": "user", "content": "Who is there?"}]
    assert page["messages"][-1]["text"] == greedy_reply(base, sent)
    shown = [(m["role"], m["text"]) for m in page["messages"]]
    assert page["stored"] == [{"role": r, "content": t} for r, t in shown] and len(shown) == 4

    # Every resource the page loaded (its own files, the API calls) came from this server.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert {f"{base}/chat.js", f"{base}/chat.css", f"{base}/v1/models", f"{base}/v1/chat/completions"} <= set(resources)
    assert all(url.startswith(f"{base}/") for url in resources), resources
    # No script error, and nothing the page's Content-Security-Policy had to block.
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    # A reload keeps the conversation and the settings; New chat clears it, and the next request starts afresh.
    browser.refresh()
    page = wait_until(browser, lambda s: s["models"] == ["tiny"], "the model list after a reload")
    assert [(m["role"], m["text"]) for m in page["messages"]] == shown
    assert browser.find_element("id", "system").get_attribute("value") == "Speak verse, as Romeo would."
    browser.find_element("id", "new-chat").click()
    assert state(browser)["messages"] == [] and state(browser)["stored"] == []
    fill(browser, "system", "")
    say(browser, "Good morrow")
    assert recorder.bodies[-1]["messages"] == [{"role": "user", "content": "Good morrow"}]


def test_api_key_errors_are_shown_and_the_typed_key_is_sent(browser, keyed):
    page = open_page(browser, keyed, models=False)  # GET v1/models without a key
    assert "401" in page["error"] and "missing API key" in page["error"], page["error"]
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "10")
    page = say(browser, "Good morrow")
    assert "401" in page["error"] and "missing API key" in page["error"]
    assert page["messages"][-1]["state"] == "error" and page["stored"] == []  # the failed turn is not kept
    assert page["input"] == "Good morrow"  # but the message is back in the box, to send again

    fill(browser, "api-key", "wrong")
    wait_until(browser, lambda s: s["error"] and "incorrect API key" in s["error"], "the wrong key's 401")
    fill(browser, "api-key", KEY)
    wait_until(browser, lambda s: s["models"] == ["tiny"] and s["error"] is None, "the models, with the key")
    browser.find_element("id", "input").clear()
    page = say(browser, "Good morrow")
    assert page["error"] is None and [m["role"] for m in page["messages"]][-2:] == ["user", "assistant"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Good morrow"}], "temperature": 0,
            "top_p": 1, "max_tokens": 10}
    assert page["messages"][-1]["text"] == greedy_reply(keyed, body, {"Authorization": f"Bearer {KEY}"})


def test_an_error_inside_the_stream_is_shown(browser, llm, slow_model):
    app = create_app(slow_model, llm.tokenizer, model_name="tiny", engine_config=EngineConfig(request_timeout=0.3))
    body = {"messages": [{"role": "user", "content": "Good morrow"}], "max_tokens": 4000, "temperature": 0,
            "stream": True}
    with running(app) as base:
        # The control: this request's stream starts (200) and carries the timeout as an event.
        raw = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert raw.status_code == 200 and '"request_timeout"' in raw.text
        open_page(browser, base)
        fill(browser, "temperature", "0")
        fill(browser, "max-tokens", "4000")
        page = say(browser, "Good morrow")
    assert "did not finish within 0.3 s" in page["error"], page["error"]
    assert page["messages"][-1]["state"] == "error" and page["stored"] == []


def test_stop_aborts_the_stream_and_keeps_the_partial_reply(browser, llm, slow_model):
    app = create_app(slow_model, llm.tokenizer, model_name="tiny")
    with running(app) as base:
        open_page(browser, base)
        fill(browser, "temperature", "0")  # greedy: this model's reply runs to max_tokens (seconds)
        fill(browser, "max-tokens", "4000")
        browser.find_element("id", "input").send_keys("Good morrow")
        browser.find_element("id", "send").click()
        # Streamed: the reply grows event by event before it is done.
        wait_until(browser, lambda s: s["messages"] and s["messages"][-1]["chunks"] >= 2
                   and s["messages"][-1]["state"] == "streaming", "two chunks of the reply")
        browser.find_element("id", "stop").click()
        page = wait_until(browser, lambda s: s["messages"][-1]["state"] == "stopped", "the stopped reply")
        # The abort closed the connection, so the server cancelled the request.
        assert wait_for(lambda: app.state.engine.stats.requests_cancelled == 1)
        assert app.state.engine.stats.requests_finished == 0
    reply = page["messages"][-1]
    assert reply["chunks"] >= 2 and reply["note"] == "(stopped)" and page["error"] is None and not page["sendDisabled"]
    assert page["stored"] == [{"role": "user", "content": "Good morrow"}, {"role": "assistant", "content": reply["text"]}]

