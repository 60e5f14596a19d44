"""Bad input never becomes a 500: random and mutated request bodies through the whole App
(validation, cache, tool calls, scheduling) with an in-memory backend."""
import asyncio
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from velollmd.app import App
from velollmd.backends.base import ModelInfo
from velollmd.backends.llamacpp import LlamaCppBackend
from velollmd.backends.registry import Registry
from velollmd.config import config_from_table
from velollmd.http.message import Request

ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": "tiny",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class MemoryBackend(LlamaCppBackend):
    """Answers without I/O; streams two chunks and a usage chunk."""

    async def chat(self, request):
        return json.loads(json.dumps(ANSWER))

    async def completion(self, request):
        return {"id": "x", "object": "text_completion", "created": 1, "model": "tiny",
                "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}

    async def chat_stream(self, request):
        yield {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]}
        yield {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    completion_stream = chat_stream

    async def answer_events(self, request):
        """The stream as an OpenAI server sends it: each chunk's JSON bytes, a read each."""
        async for chunk in self.chat_stream(request):
            yield [json.dumps(chunk).encode()]

    async def embeddings(self, body):
        return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]}

    async def list_models(self):
        return [ModelInfo(id="tiny", backend=self.name)]


def make_app() -> App:
    config = config_from_table({"backends": [{"name": "mem", "kind": "llamacpp", "url": "http://127.0.0.1:9",
                                              "models": ["tiny*"]}], "cache": {"path": ""}, "responses": {"path": ""},
                                              "key_limits": {"path": ""}})
    return App(config, registry=Registry(config.backends, backends=[MemoryBackend(config.backends[0])]))


APP = make_app()


@pytest.fixture(scope="module")
def loop():
    """One loop for the module's many examples, closed with the apps it started."""
    with asyncio.Runner() as runner:
        runner.run(APP.start())
        runner.run(GARBAGE_APP.start())
        try:
            yield runner
        finally:
            runner.run(APP.close())
            runner.run(GARBAGE_APP.close())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
FIELDS = ["model", "messages", "temperature", "top_p", "max_tokens", "stream", "stream_options", "tools",
          "tool_choice", "stop", "n", "seed", "response_format", "prompt", "input", "logit_bias", "options",
          "format", "raw", "keep_alive", "images", "system"]
VALID_MESSAGE = {"role": "user", "content": "hi"}
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate",
         "/api/embed", "/api/show"]


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"]) | JSON_VALUES},
    optional={"content": st.text(max_size=20) | JSON_VALUES, "tool_calls": JSON_VALUES | st.lists(
        st.fixed_dictionaries({}, optional={"id": JSON_VALUES, "type": JSON_VALUES, "function": JSON_VALUES | st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=5) | JSON_VALUES, "arguments": JSON_VALUES})}), max_size=2),
        "images": JSON_VALUES, "name": JSON_VALUES, "tool_call_id": JSON_VALUES})
TOOLS = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g"])}, optional={"parameters": JSON_VALUES})}) | JSON_VALUES, max_size=2)


def bodies():
    base = st.fixed_dictionaries({"model": st.sampled_from(["tiny", "nope", ""]) | JSON_VALUES,
                                  "messages": st.just([VALID_MESSAGE]) | st.lists(MESSAGE, max_size=3) | JSON_VALUES},
                                 optional={"tools": TOOLS, "tool_choice": JSON_VALUES | st.sampled_from(
                                     ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}])})
    extra = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5)
    return st.builds(lambda b, e: {**b, **e}, base, extra)


def call(loop: asyncio.Runner, path: str, raw: bytes) -> int:
    async def go():
        response = await APP.handle(Request("POST", path, [("host", "x")], raw))
        if response.stream is not None:
            async for _ in response.stream:
                pass
        return response.status
    return loop.run(go())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), bodies())
def test_random_json_bodies_never_cause_a_500(loop, path, body):
    assert call(loop, path, json.dumps(body).encode()) != 500


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PATHS), st.binary(max_size=64))
def test_random_bytes_never_cause_a_500(loop, path, raw):
    assert call(loop, path, raw) in (400, 404, 405, 413, 422)


TOOLS_OK = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("path,body,status", [
    ("/v1/chat/completions", {"model": "tiny", "tools": TOOLS_OK, "messages": [
        {"role": "assistant", "tool_calls": [{"function": "x"}]}, {"role": "user", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": "zz"}]}, 400),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "assistant", "content": "x", "tool_calls": [5]}]}, 400),
    ("/api/chat", {"model": "tiny", "messages": True}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": []}]}, 400),
    ("/v1/chat/completions", {"model": "tiny", "tools": TOOLS_OK, "messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}]}, 200),
])
def test_found_by_fuzzing(loop, path, body, status):
    assert call(loop, path, json.dumps(body).encode()) == status


class GarbageBackend(MemoryBackend):
    """Answers whatever the test put in `answer` / `chunks`."""
    answer: object = None
    chunks: list = []

    async def chat(self, request):
        return self.answer

    completion = chat

    async def chat_stream(self, request):
        for chunk in self.chunks:
            yield chunk

    completion_stream = chat_stream


def make_garbage_app() -> tuple[App, GarbageBackend]:
    config = config_from_table({"backends": [{"name": "junk", "kind": "llamacpp", "url": "http://127.0.0.1:9",
                                              "models": ["tiny*"]}], "cache": {"path": ""}, "responses": {"path": ""},
                                              "key_limits": {"path": ""}})
    backend = GarbageBackend(config.backends[0])
    return App(config, registry=Registry(config.backends, backends=[backend])), backend


GARBAGE_APP, GARBAGE = make_garbage_app()
CHOICE = st.fixed_dictionaries({}, optional={"message": JSON_VALUES, "delta": JSON_VALUES, "text": JSON_VALUES,
                                             "finish_reason": JSON_VALUES, "index": JSON_VALUES})
ANSWERS = JSON_VALUES | st.fixed_dictionaries({"choices": st.lists(CHOICE | JSON_VALUES, max_size=2) | JSON_VALUES},
                                              optional={"usage": JSON_VALUES, "model": JSON_VALUES})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"]),
       st.booleans(), ANSWERS, st.lists(ANSWERS, max_size=3), st.booleans())
@example(path="/v1/chat/completions", stream=True, answer=None, chunks=[{"choices": [{"index": []}]}],
         with_tools=True)           # the tool-call layer keys its choices by index
def test_malformed_backend_answers_are_502_never_500(loop, path, stream, answer, chunks, with_tools):
    GARBAGE.answer, GARBAGE.chunks = answer, chunks
    GARBAGE_APP.service.breakers.clear()          # each example meets a closed circuit
    body = {"model": "tiny", "stream": stream, "messages": [VALID_MESSAGE], "prompt": "hi"}
    if with_tools:
        body["tools"] = TOOLS_OK

    async def go():
        response = await GARBAGE_APP.handle(Request("POST", path, [("host", "x")], json.dumps(body).encode()))
        if response.stream is not None:
            async for _ in response.stream:
                pass
        return response.status
    assert loop.run(go()) in (200, 400, 502)


def test_a_stream_that_fails_midway_frees_its_slot_at_once(loop):
    GARBAGE.chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
                       "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
                      {"choices": "broken"}]
    GARBAGE_APP.service.breakers.clear()
    body = {"model": "tiny", "stream": True, "messages": [VALID_MESSAGE]}

    async def go():
        response = await GARBAGE_APP.handle(Request("POST", "/v1/chat/completions", [("host", "x")],
                                                    json.dumps(body).encode()))
        frames = [frame async for frame in response.stream]
        return frames, GARBAGE_APP.service.stats()["num_running"]
    frames, num_running = loop.run(go())
    assert frames[-1].startswith(b'data: {"error":') and b"cannot read" in frames[-1]
    assert num_running == 0                      # not left to the garbage collector
