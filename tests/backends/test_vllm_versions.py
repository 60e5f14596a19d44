"""A structured output reaches a vLLM backend as its version reads it: vLLM took guided_* (and a
top-level `structural_tag`) until 0.12.0 removed them, and `structured_outputs` from 0.10.2 on;
either ignores the other's fields (a line in its log, an unconstrained answer). A scripted vLLM
(its /metrics gauge, its GET /version, a chat endpoint that records the body it got) behind the
real daemon, driven by the official openai client as apps written for vLLM drive it."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.ctl.bench.helpers import run_ctl
from tests.daemon_rig import RunningDaemon
from tests.rig.scripted_openai import VLLM_METRICS, ScriptedServer
from tests.rig.waiting import wait_for

GRAMMAR = 'root ::= "yes" | "no"'
TAG = json.dumps({"type": "structural_tag", "structures": [{"begin": "<f>", "schema": {"type": "object"},
                                                             "end": "</f>"}], "triggers": ["<f>"]})
# (kind, its top-level field before vLLM 0.10.2, a value)
CONSTRAINTS = [("choice", "guided_choice", ["yes", "no"]), ("regex", "guided_regex", "[a-z]+"),
               ("grammar", "guided_grammar", GRAMMAR), ("structural_tag", "structural_tag", TAG)]
# how each vLLM is set up -> which spelling velollmd sends it: "structured_outputs", "guided", or
# None (the version unknown: as the client sent it)
VLLMS = {"0.9.2": "guided", "0.11.0": "structured_outputs", "0.12.0": "structured_outputs",
         "no /version": None, "slots set": None}


class ScriptedVLLM:
    """The daemon in front of one scripted vLLM, discovery done."""

    def __init__(self, setup: str):
        routes = {"/metrics": (200, VLLM_METRICS)}
        if setup[0].isdigit():
            routes["/version"] = (200, json.dumps({"version": setup}).encode())
        self.server = ScriptedServer(routes)
        backend = {"name": "vllm", "kind": "openai", "url": self.server.url, "models": ["m"],
                   "slots": 8 if setup == "slots set" else 0}
        self.daemon = RunningDaemon({"backends": [backend], "cache": {"enabled": False}}).start()
        self.client = openai.OpenAI(base_url=self.daemon.url + "/v1", api_key="x", max_retries=0)
        assert wait_for(lambda: self.health()["healthy"] and (setup == "slots set" or self.health()["server"]))

    def health(self) -> dict:
        return httpx.get(self.daemon.url + "/health").json()["backends"][0]

    def sent(self, **extra_body) -> dict:
        """The body the vLLM got for a chat with `extra_body`."""
        self.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "yes or no?"}],
                                            max_tokens=5, extra_body=extra_body)
        return self.server.bodies[-1]

    def close(self) -> None:
        self.daemon.stop()
        self.server.close()


@pytest.fixture(scope="module", params=list(VLLMS))
def vllm(request):
    scripted = ScriptedVLLM(request.param)
    scripted.setup, scripted.spelling = request.param, VLLMS[request.param]
    yield scripted
    scripted.close()


@pytest.mark.parametrize("kind, legacy, value", CONSTRAINTS)
@pytest.mark.parametrize("client_spelling", ["guided", "structured_outputs"])
def test_each_constraint_reaches_vllm_in_the_spelling_its_version_reads(vllm, kind, legacy, value,
                                                                        client_spelling):
    asked = {legacy: value} if client_spelling == "guided" else {"structured_outputs": {kind: value}}
    body = vllm.sent(**asked)
    expected = {"guided": {legacy: value}, "structured_outputs": {"structured_outputs": {kind: value}},
                None: asked}[vllm.spelling]
    assert {k: body.get(k) for k in (legacy, "structured_outputs")} == {legacy: None, "structured_outputs": None,
                                                                        **expected}


def test_json_reaches_every_vllm_as_response_format_and_its_whitespace_option_respelled(vllm):
    """The JSON kinds are response_format, which every vLLM reads; guided_whitespace_pattern
    beside them is respelled as the constraints are."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for asked in ({"guided_json": schema}, {"structured_outputs": {"json": schema}}):
        body = vllm.sent(**asked)
        assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "guided_json",
                                                                                  "schema": schema}}
        assert "guided_json" not in body and "structured_outputs" not in body
    body = vllm.sent(guided_json=schema, guided_whitespace_pattern="[ ]?")
    top, nested = body.get("guided_whitespace_pattern"), (body.get("structured_outputs") or {}).get("whitespace_pattern")
    assert (top, nested) == ((None, "[ ]?") if vllm.spelling == "structured_outputs" else ("[ ]?", None))


def test_options_an_old_vllm_has_no_field_for_are_left_out_and_the_backend_choice_kept(vllm):
    body = vllm.sent(structured_outputs={"choice": ["yes", "no"], "disable_any_whitespace": True},
                     guided_decoding_backend="xgrammar")
    assert body["guided_decoding_backend"] == "xgrammar"
    if vllm.spelling == "guided":
        assert "structured_outputs" not in body and body["guided_choice"] == ["yes", "no"]
    else:
        assert body["structured_outputs"] == {"choice": ["yes", "no"], "disable_any_whitespace": True}


def test_health_and_velollmctl_status_show_the_vllms_version(vllm, capsys):
    version = vllm.setup if vllm.setup[0].isdigit() else None
    health = vllm.health()
    assert health["server_version"] == version
    assert health["server"] == (None if vllm.setup == "slots set" else "vLLM")
    rc, out, _ = run_ctl(capsys, "status", "--url", vllm.daemon.url)
    row = next(line for line in out.splitlines() if line.startswith("vllm "))
    kind = {"slots set": "openai", "no /version": "openai:vLLM"}.get(vllm.setup, f"openai:vLLM-{version}")
    assert rc == 0 and f" {kind} " in row, row
