import pytest

from velollmd.cache.exact import CachedResponse
from velollmd.cache.policy import client_bypass, client_forbids_store, reproducible, response_storable

GREEDY = {"model": "m", "messages": [], "temperature": 0}


@pytest.mark.parametrize("headers", [
    {"Cache-Control": "no-cache"}, {"cache-control": "max-age=0, no-store"},
    {"X-VeloLLM-Cache": "bypass"}, {"x-velollm-cache": "BYPASS"}, {"Pragma": "no-cache"},
])
def test_client_opt_out(headers):
    assert client_bypass(headers) == "bypass"


def test_no_opt_out():
    assert client_bypass({"cache-control": "max-age=60", "x-velollm-cache": "on"}) is None
    assert client_bypass({"cache-control": "max-age=60", "pragma": "no-cache"}) is None   # Cache-Control rules
    assert client_bypass({}) is None and reproducible(GREEDY)


def test_no_cache_still_stores_fresh_answer_but_no_store_does_not():
    assert not client_forbids_store({"cache-control": "no-cache"})
    assert not client_forbids_store({"pragma": "no-cache"})
    assert client_forbids_store({"Cache-Control": "no-store"})
    assert client_forbids_store({"x-velollm-cache": "bypass"})


@pytest.mark.parametrize("request_,defaults,sampled,expected", [
    ({"temperature": 0.7}, None, False, False),
    ({"temperature": 0.7, "seed": 1}, None, False, True),
    ({"temperature": 0.7}, None, True, True),
    ({}, {"temperature": 0.8}, False, False),            # backend default samples
    ({}, {"temperature": 0.0}, False, True),
    ({"options": {"temperature": 0}}, {"temperature": 0.8}, False, True),
    ({"temperature": 0, "n": 2}, None, True, False),
    ({"temperature": 0, "logprobs": True}, None, False, False),
    ({"temperature": 0, "logprobs": 0}, None, False, False),    # a completion's chosen-token logprobs
    ({"temperature": 0, "logprobs": False}, None, False, True),
])
def test_reproducibility(request_, defaults, sampled, expected):
    assert reproducible(request_, defaults=defaults, cache_sampled=sampled) is expected


def test_response_storable():
    ok = CachedResponse(model="m", content="x", finish_reason="stop")
    assert response_storable(ok)
    assert response_storable(CachedResponse(model="m", finish_reason="tool_calls"))
    assert not response_storable(ok, status=502)
    assert not response_storable(ok, aborted=True)
    assert not response_storable(None)
    assert not response_storable(CachedResponse(model="m", finish_reason="error"))
