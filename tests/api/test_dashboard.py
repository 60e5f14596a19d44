"""The dashboard's page and feed through the real daemon in front of the Ollama emulator:
content negotiation on `/`, the page's exposure with keys set, and the feed's numbers after
known traffic (counts, cache hits, tokens, p50/p99 from the histograms, recent request ids,
keys' usage). The page itself runs in a real browser in test_dashboard_browser.py."""
import re

import httpx
import openai
import pytest

from tests.daemon_rig import ollama_backend
from velollmd import __version__
from velollmd.api.access import accepts_html
from velollmd.api.dashboard import FEED_PATH, content_security_policy, page
from velollmd.http.message import Request
from velollmd.metrics import Histogram, bucket_quantile

MODEL = "llama3.2:latest"
KEY = "sk-dash-test"
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


@pytest.mark.parametrize("accept,html", [
    ("text/html,application/xhtml+xml,*/*;q=0.8", True),    # a browser
    ("TEXT/HTML", True),
    ("application/json, text/html;q=0.5", True),
    ("*/*", False),                                          # curl
    ("application/json", False),
    ("text/html;q=0", False),
    ("", False),
    ("text/htmlx", False),
])
def test_accepts_html(accept, html):
    assert accepts_html(Request("GET", "/", [("accept", accept)] if accept else [])) is html


@pytest.mark.parametrize("q,counts,expected", [
    (0.5, [0, 10, 0, 0], 1.5),          # linear inside the bucket (1, 2]
    (0.99, [0, 10, 0, 0], 1.99),
    (0.5, [10, 0, 0, 0], 0.5),          # the first bucket starts at 0
    (0.5, [2, 0, 2, 0], 1.0),           # the rank ends exactly at a bucket's top
    (0.99, [1, 0, 0, 9], 4.0),          # in +Inf: the highest finite bound
    (0.5, [0, 0, 0, 0], None),
])
def test_bucket_quantile(q, counts, expected):
    value = bucket_quantile(q, (1, 2, 4), counts)
    assert value == (None if expected is None else pytest.approx(expected))


def test_histogram_merged_adds_every_series():
    histogram = Histogram("h", "help", buckets=(1, 2))
    histogram.observe(0.5, backend="a")
    histogram.observe(1.5, backend="b")
    histogram.observe(9.0, backend="b")
    assert histogram.merged() == [1, 1, 1, 11.0, 3]           # (0,1], (1,2], +Inf, sum, count


def test_page_is_self_contained_and_its_csp_pins_its_code():
    body, policy = page()
    html = body.decode()
    # no external resource: the one URL is the SVG namespace (a name, never fetched)
    assert set(re.findall(r"https?://[^\s\"'`<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=\"(?!data:)", html)
    assert "innerHTML" not in html                             # feed values go in as text
    assert policy == content_security_policy(html)
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/]+=*'", policy)) == 2      # one script, one style


@pytest.fixture
def open_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)]})


def test_root_negotiates_html_for_browsers_and_json_for_api_clients(open_daemon):
    page_answer = httpx.get(open_daemon.url + "/", headers=HTML)
    assert page_answer.status_code == 200
    assert page_answer.headers["content-type"] == "text/html; charset=utf-8"
    assert page_answer.headers["content-security-policy"] == page()[1]
    assert page_answer.headers["vary"] == "accept"
    assert page_answer.content == page()[0]
    api_answer = httpx.get(open_daemon.url + "/")
    assert api_answer.json() == {"name": "velollmd", "version": __version__}
    assert api_answer.headers["content-type"].startswith("application/json")


def test_feed_shows_the_traffic_it_was_sent(open_daemon):
    client = openai.OpenAI(base_url=open_daemon.url + "/v1", api_key="unused", max_retries=0)
    ids = []
    for content in ("hello dashboard", "hello dashboard"):                # the second is a cache hit
        answer = client.chat.completions.with_raw_response.create(**chat(content))
        ids.append(answer.headers["x-request-id"])
    answer = client.chat.completions.with_raw_response.create(**chat("a stream", stream=True))
    ids.append(answer.headers["x-request-id"])
    assert sum(1 for _ in answer.parse()) > 1
    bad = httpx.post(open_daemon.url + "/v1/chat/completions", json={"model": MODEL},
                     headers={"x-request-id": "dash-bad-1"})
    assert bad.status_code == 400
    httpx.get(open_daemon.url + "/health")                                 # monitoring: not counted

    feed = httpx.get(open_daemon.url + FEED_PATH).json()
    again = httpx.get(open_daemon.url + FEED_PATH).json()                  # polling is not counted
    assert feed["totals"] == again["totals"]
    totals = feed["totals"]
    assert totals["requests"] == 4 and totals["errors_4xx"] == 1 and totals["errors_5xx"] == 0
    assert totals["cache_hits"] == 1 and totals["cache_misses"] >= 1
    assert totals["completion_tokens"] >= 16 and totals["prompt_tokens"] > 0
    assert [r["request_id"] for r in feed["recent"]] == ["dash-bad-1", *reversed(ids)]   # newest first
    assert feed["recent"][0]["status"] == 400 and feed["recent"][1]["path"] == "/v1/chat/completions"
    assert all(r["age_s"] >= 0 for r in feed["recent"])
    ttft, overhead = feed["latency"]["ttft"], feed["latency"]["overhead"]
    assert ttft["count"] == 1 and sum(ttft["counts"]) == 1 and len(ttft["counts"]) == len(ttft["bounds"]) + 1
    assert 0 < ttft["p50"] <= ttft["p99"]
    assert overhead["count"] == 3 and 0 < overhead["p50"] <= overhead["p99"]
    [backend] = feed["backends"]
    assert backend["name"] == "ollama" and backend["healthy"] is True and backend["num_waiting"] == 0
    assert feed["keys_required"] is False and feed["keys"] == [] and feed["status"] == "ok"


@pytest.fixture
def keyed_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"server": {"api_keys": [KEY]}, "backends": [ollama_backend(ollama_emulator)],
                           "keys": [{"name": "team-a", "key": "sk-team-a", "rpm": 5}]})


def test_with_keys_the_page_is_public_and_the_feed_needs_a_key(keyed_daemon):
    url = keyed_daemon.url
    assert httpx.get(url + "/", headers=HTML).status_code == 200             # the page asks for a key
    assert httpx.get(url + "/").status_code == 401                           # the JSON stays guarded
    refused = httpx.get(url + FEED_PATH, headers=HTML)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-team-a", max_retries=0)
    client.chat.completions.create(**chat("from team a"))
    feed = httpx.get(url + FEED_PATH, headers={"authorization": f"Bearer {KEY}"}).json()
    usage = {k["name"]: k for k in feed["keys"]}
    assert usage["team-a"]["requests"] == 1 and usage["team-a"]["limits"]["rpm"] == 5
    assert usage["team-a"]["completion_tokens"] > 0
    assert feed["keys_required"] is True and feed["recent"][0]["key"] == "team-a"
