"""An instant OpenAI-compatible backend with scripted misbehaviour, run as its own process:

    python -m tests.rig.scripted_backend PORT

No inference: every chat completion is 16 tokens of "hello ", as JSON or as an SSE stream of
16 chunks (then finish, usage when asked, [DONE]). The last user message picks a script:
    "call a tool"     a tool call of the first tool given (`get_weather` arguments)
    "endless body"    a JSON answer whose Content-Length is a terabyte, bytes written forever
    "endless stream"  SSE content chunks forever
    "endless event"   one SSE event that never ends (`data: xxxx...`, no blank line)
The soak and the bounded-memory tests use it; it is deliberately small and fast so that the
daemon's own cost dominates.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

NUM_TOKENS = 16
USAGE = {"prompt_tokens": 10, "completion_tokens": NUM_TOKENS, "total_tokens": 10 + NUM_TOKENS}
MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "soak"}]}).encode()
PIECE = 65536


def completion(message: dict, finish_reason: str) -> bytes:
    return json.dumps({"id": "chatcmpl-soak", "object": "chat.completion", "created": 1, "model": "tiny",
                       "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                       "usage": USAGE}).encode()


def chunk(delta: dict, finish_reason=None, **extra) -> bytes:
    body = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if delta is not None else [],
            **extra}
    return framed(b"data: " + json.dumps(body).encode() + b"\n\n")


def framed(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def tool_call(body: dict) -> dict:
    name = body["tools"][0]["function"]["name"]
    return {"id": "call_soak", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"city": "Paris"})}}


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


async def answer(writer: asyncio.StreamWriter, body: dict) -> None:
    script = last_user_text(body)
    if "endless" in script:
        await endless(writer, script)
    elif body.get("stream"):
        await stream(writer, body, "call a tool" in script and body.get("tools"))
    elif "call a tool" in script and body.get("tools"):
        reply(writer, completion({"role": "assistant", "content": None, "tool_calls": [tool_call(body)]},
                                 "tool_calls"))
    else:
        reply(writer, completion({"role": "assistant", "content": "hello " * NUM_TOKENS}, "length"))


def reply(writer: asyncio.StreamWriter, data: bytes, content_type: bytes = b"application/json") -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                 % (content_type, len(data)) + data)


async def stream(writer: asyncio.StreamWriter, body: dict, with_tool: bool) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    writer.write(chunk({"role": "assistant", "content": ""}))
    if with_tool:
        writer.write(chunk({"tool_calls": [{"index": 0, **tool_call(body)}]}) + chunk({}, "tool_calls"))
    else:
        for _ in range(NUM_TOKENS):
            writer.write(chunk({"content": "hello "}))
            await writer.drain()
        writer.write(chunk({}, "length"))
    if (body.get("stream_options") or {}).get("include_usage"):
        writer.write(chunk(None, usage=USAGE))
    writer.write(framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def endless(writer: asyncio.StreamWriter, script: str) -> None:
    """Writes until the daemon hangs up (ConnectionError ends the connection)."""
    if "body" in script:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % (1 << 40) + b'{"id": "')
        piece = b"x" * PIECE
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunk({"role": "assistant", "content": ""}))
        piece = chunk({"content": "more "}) * 64 if "stream" in script else framed(b"data: " + b"x" * PIECE)
        if "event" in script:
            writer.write(framed(b"data: "))
            piece = framed(b"x" * PIECE)
    while True:
        writer.write(piece)
        await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            target = head.split(b" ", 2)[1]
            if target.startswith(b"/v1/models"):
                reply(writer, MODELS)
            elif target.startswith(b"/health"):
                reply(writer, b'{"status": "ok"}')
            else:
                await answer(writer, body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


class ScriptedBackend:
    """This module as a process on a free loopback port (its own CPU time, not the test's)."""

    def __init__(self):
        from tests.rig.net import free_port
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedBackend:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.rig.scripted_backend", str(self.port)],
                                     cwd=root, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)})
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError("the scripted backend did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc.stdout.close()

    def __enter__(self) -> ScriptedBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def toml(self, extra: str = "slots = 64") -> str:
        return (f'[[backends]]\nname = "scripted"\nkind = "openai"\nurl = "{self.url}"\n'
                f'models = ["tiny*"]\n{extra}\n')


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
