"""An answer cut by max_tokens while the model still thinks keeps the thinking it produced, on
every route, whole and streamed, as llama-server itself returns it (`reasoning_content`, content
null, finish_reason "length"). The rig's llama-server build does not split thinking out of a
model's text, so the backend replays a recorded llama-server answer; the official SDKs' types
read what comes out."""
import asyncio
import json

import anthropic.types
import ollama
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response as SDKResponse

from tests.api.test_bad_input_fuzz import make_garbage_app
from velollmd.http.message import Request

THOUGHT = "The user wants six times seven"
USAGE = {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}


def recorded_chunk(delta, finish_reason=None) -> dict:
    return {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


# llama-server's answer and stream for a thought cut by max_tokens (reasoning_format deepseek)
CUT_ANSWER = {"id": "chatcmpl-rec", "object": "chat.completion", "created": 1, "model": "tiny", "usage": USAGE,
              "choices": [{"index": 0, "finish_reason": "length",
                           "message": {"role": "assistant", "content": None, "reasoning_content": THOUGHT}}]}
CUT_CHUNKS = [recorded_chunk({"role": "assistant", "content": None}),
              recorded_chunk({"reasoning_content": "The user wants "}),
              recorded_chunk({"reasoning_content": "six times seven"}), recorded_chunk({}, "length"),
              {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
               "choices": [], "usage": USAGE}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
HI = [{"role": "user", "content": "6*7?"}]


@pytest.fixture(scope="module")
def post():
    app, backend = make_garbage_app()
    backend.answer, backend.chunks = CUT_ANSWER, CUT_CHUNKS
    with asyncio.Runner() as runner:
        runner.run(app.start())
        try:
            yield lambda path, body: runner.run(_body(app, path, body))
        finally:
            runner.run(app.close())


async def _body(app, path: str, body: dict) -> bytes:
    response = await app.handle(Request("POST", path, [("host", "x")], json.dumps(body).encode()))
    assert response.status == 200
    return response.body if response.stream is None else b"".join([part async for part in response.stream])


def sse_data(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


@pytest.mark.parametrize("tools", [[], TOOLS], ids=["plain", "with-tools"])
def test_openai_chat_keeps_a_cut_thought(post, tools):
    body = {"model": "tiny", "messages": HI, "max_tokens": 8, **({"tools": tools} if tools else {})}
    choice = ChatCompletion.model_validate_json(post("/v1/chat/completions", body)).choices[0]
    assert choice.finish_reason == "length" and choice.message.model_extra["reasoning_content"] == THOUGHT
    chunks = [ChatCompletionChunk.model_validate(c) for c in sse_data(post("/v1/chat/completions",
                                                                          {**body, "stream": True}))]
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert "".join((d.delta.model_extra or {}).get("reasoning_content") or "" for d in deltas) == THOUGHT
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_ollama_chat_keeps_a_cut_thought_as_message_thinking(post, stream):
    raw = post("/api/chat", {"model": "tiny", "messages": HI, "stream": stream, "options": {"num_predict": 8}})
    replies = [ollama.ChatResponse.model_validate_json(line) for line in raw.splitlines()]
    assert "".join(r.message.thinking or "" for r in replies) == THOUGHT
    assert replies[-1].done and replies[-1].done_reason == "length"


def test_anthropic_messages_keep_a_cut_thought_as_a_thinking_block(post):
    message = anthropic.types.Message.model_validate_json(
        post("/v1/messages", {"model": "tiny", "max_tokens": 8, "messages": HI}))
    assert [(b.type, b.thinking) for b in message.content] == [("thinking", THOUGHT)]
    assert message.stop_reason == "max_tokens"


def test_responses_keep_a_cut_thought_as_a_reasoning_item(post):
    response = SDKResponse.model_validate_json(post("/v1/responses", {"model": "tiny", "input": "6*7?",
                                                                      "max_output_tokens": 8}))
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].type == "reasoning" and response.output[0].content[0].text == THOUGHT
