"""The dashboard in a real headless Chromium (Debian's `chromium`, installed by `make test`),
in front of a real daemon and the Ollama emulator: after traffic, the page shows the daemon's
own numbers and request ids, updates live, draws its charts, logs no console error, and a
screenshot is written; with keys set, it asks for a key and shows the data once given one."""
import httpx
import openai
import pytest

from tests.daemon_rig import ollama_backend
from tests.rig.chromium import BrowserUnavailable, Chromium
from velollmd.api.dashboard import FEED_PATH

MODEL = "llama3.2:latest"
KEY = "sk-dash-browser"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser(tmp_path):
    try:
        chromium = Chromium(tmp_path / "chromium-profile").start()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    yield chromium
    chromium.close()


def chat(client: openai.OpenAI, content: str, request_id: str, **extra) -> None:
    answer = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], temperature=0,
        extra_headers={"x-request-id": request_id}, **extra)
    if extra.get("stream"):
        assert sum(1 for _ in answer.parse()) > 1
    assert answer.headers["x-request-id"] == request_id


def texts(page, selector: str) -> list[str]:
    return page.evaluate(f"[...document.querySelectorAll({selector!r})].map(e => e.textContent)")


def test_dashboard_shows_the_daemons_numbers(daemon_factory, ollama_emulator, browser, tmp_path):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)
    sent = ["dash-1", "dash-2", "dash-3"]
    chat(client, "hello page", sent[0])
    chat(client, "hello page", sent[1])                          # a cache hit
    chat(client, "a stream", sent[2], stream=True)
    assert httpx.post(daemon.url + "/v1/chat/completions", json={"model": MODEL},
                      headers={"x-request-id": "dash-bad"}).status_code == 400
    feed = httpx.get(daemon.url + FEED_PATH).json()

    page = browser.new_page()
    page.navigate(daemon.url + "/?interval=0.5")
    page.wait_for("Number(document.body.dataset.polls) >= 2")
    totals = feed["totals"]
    assert (totals["requests"], totals["cache_hits"], totals["cache_misses"]) == (4, 1, 2)
    assert page.evaluate("document.getElementById('total-requests').textContent") == "4"
    assert page.evaluate("document.getElementById('total-errors').textContent") == "1 / 0"
    assert page.evaluate("document.getElementById('cache-hit-rate').textContent") == "33.3 %"
    assert page.evaluate("document.getElementById('total-tokens').textContent") == \
        f"{totals['prompt_tokens']} / {totals['completion_tokens']}"
    assert page.evaluate("[...document.querySelectorAll('#recent tr')].map(r => r.dataset.requestId)") == \
        ["dash-bad", *reversed(sent)]
    assert texts(page, "#recent td.id") == ["dash-bad", *reversed(sent)]
    assert texts(page, "#backends tr[data-backend='ollama'] td")[:3] == ["ollama", "ollama", "healthy"]
    assert page.evaluate("document.getElementById('key-panel').hidden") is True

    # live: a request made while the page is open shows up, with its time to first token charted
    chat(client, "while you watch", "dash-live", stream=True)
    page.wait_for("document.querySelector('#recent tr[data-request-id=\"dash-live\"]') !== null")
    page.wait_for("document.getElementById('total-requests').textContent === '5'")
    page.wait_for("document.querySelector('#chart-ttft path.a').getAttribute('d').startsWith('M')")
    assert page.evaluate("document.querySelector('#chart-rps path.a').getAttribute('d')").count("M") >= 1
    assert page.evaluate("document.getElementById('chart-ttft-latest').textContent") != "– / –"

    shot = page.screenshot(tmp_path / "dashboard.png")
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 10_000
    (tmp_path / "dashboard.dom.html").write_text(page.dom())
    assert page.errors == []


def test_with_keys_the_page_asks_for_one(daemon_factory, ollama_emulator, browser, tmp_path):
    daemon = daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)],
                             "keys": [{"name": "team-b", "key": "sk-team-b"}]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-team-b", max_retries=0)
    chat(client, "keyed", "dash-keyed")

    page = browser.new_page()
    page.navigate(daemon.url + "/?interval=0.5")
    page.wait_for("!document.getElementById('key-panel').hidden")
    assert "needs an API key (401)" in page.evaluate("document.getElementById('key-message').textContent")
    assert page.evaluate("document.getElementById('content').hidden") is True
    page.screenshot(tmp_path / "dashboard-key-prompt.png")

    page.evaluate("document.getElementById('key-input').value = 'wrong';"
                  "document.getElementById('key-form').requestSubmit()")
    page.wait_for("document.getElementById('key-message').textContent.includes('refused this key')")
    page.evaluate(f"document.getElementById('key-input').value = {KEY!r};"
                  "document.getElementById('key-form').requestSubmit()")
    page.wait_for("!document.getElementById('content').hidden")
    assert page.evaluate("sessionStorage.getItem('velollm.apiKey')") == KEY
    assert texts(page, "#keys tr[data-key='team-b'] td")[:2] == ["team-b", "1"]
    assert texts(page, "#recent td.id") == ["dash-keyed"]
    # what the console shows: the browser's note on each 401 of the feed, nothing from the page
    assert len(page.errors) == 2 and all("401" in error and FEED_PATH in error for error in page.errors)
