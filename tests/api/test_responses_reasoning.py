"""A backend's reasoning_content reaches a Responses client as a `reasoning` item, whole and
streamed, through the whole App (pipeline, tool-call layer, translation); the SDK's own types
parse what comes out."""
import asyncio
import json

import pytest
from openai.types.responses import Response as SDKResponse

from tests.api.test_bad_input_fuzz import make_garbage_app
from velollmd.http.message import Request

APP, BACKEND = make_garbage_app()
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}
BACKEND.answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "tiny", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42.",
                                                      "reasoning_content": "Six times seven."}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def chunk(delta, finish=None):
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


BACKEND.chunks = [chunk({"role": "assistant", "content": None}), chunk({"reasoning_content": "Six times "}),
                  chunk({"reasoning_content": "seven."}), chunk({"content": "42."}), chunk({}, "stop"),
                  {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny", "choices": [],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}]


@pytest.fixture(scope="module")
def loop():
    with asyncio.Runner() as runner:
        runner.run(APP.start())
        try:
            yield runner
        finally:
            runner.run(APP.close())


def post(loop, body: dict) -> bytes:
    async def go():
        response = await APP.handle(Request("POST", "/v1/responses", [("host", "x")], json.dumps(body).encode()))
        assert response.status == 200
        if response.stream is None:
            return response.body
        return b"".join([frame async for frame in response.stream])
    return loop.run(go())


@pytest.mark.parametrize("tools", [[], [TOOL]], ids=["plain", "with-tools"])
def test_reasoning_item_whole(loop, tools):
    response = SDKResponse.model_validate_json(post(loop, {"model": "tiny", "input": "6*7?", "tools": tools}))
    assert [o.type for o in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "Six times seven." and response.output_text == "42."


@pytest.mark.parametrize("tools", [[], [TOOL]], ids=["plain", "with-tools"])
def test_reasoning_item_streamed(loop, tools):
    raw = post(loop, {"model": "tiny", "input": "6*7?", "tools": tools, "stream": True})
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    names = [line[7:].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names == [e["type"] for e in events]                 # each event named as OpenAI does
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
    assert "".join(deltas) == "Six times seven."
    final = SDKResponse.model_validate(events[-1]["response"])
    assert events[-1]["type"] == "response.completed" and final.output_text == "42."
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == "Six times seven."
    assert final.usage.total_tokens == 8
