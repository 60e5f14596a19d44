"""Stream events from a backend to the client, touching as little as possible.

Every event a backend streams is decoded (json.loads, in C: proves it is JSON, shows an
error event or usage) and its shape checked (backends/shape.py). What the client then gets:

- the usage-only chunk (`choices: []`): counted (`on_usage`), kept only if usage was asked for;
- usage on an ordinary chunk: removed, or null when usage was asked for (OpenAI's shape);
- `model`: the name the client asked for.

When the stream goes straight to the OpenAI SSE writer (`Delivery.frames`: no tool repair, no
cache recording, no translation reads it), an event that needs nothing but the model name is
passed on as the backend's own bytes with the name replaced in place (re-encoding every chunk
cost more than the rest of its way through the daemon), and the frames of one backend read
go out as one Burst: one send per read, with no wait for the end of the loop turn.

Most events of a stream differ from the one before only in the text of the delta (a
ContentTemplate): such an event is proved JSON of the same shape by comparing bytes and checking
the new text is a well-formed JSON string, and relayed without decoding it.
"""
from __future__ import annotations

import re

from ..http.message import Burst
from ..http.sse import encode_event
from ..wire import wirejson
from ..wire.chunks import usage_rules
from ..wire.outcome import Delivery
from ..wire.shape import check_chunk


class ChunkRelay:
    """Turns one stream's backend events (JSON bytes or dicts) into client chunks."""

    def __init__(self, backend, model: str, endpoint: str, delivery: Delivery):
        self.backend = backend
        self.model = model
        self.endpoint = endpoint
        self.frames = delivery.frames
        self.include_usage = delivery.include_usage
        self.on_usage = delivery.on_usage
        self.model_field = _model_field(model, b":")
        self.upstream: tuple[str, bytes | None] | None = None   # backend's name, its bytes
        self.num_output_tokens: int | None = None    # from the usage chunk, when one came
        self.num_events = 0                          # the backend's events relayed so far
        self.template: ContentTemplate | None = None  # the last event relayed as its own bytes

    def convert_batch(self, events: list[bytes] | list[dict]) -> list[dict] | list[Burst]:
        """The client's chunks for one backend read; in passthrough, one Burst of SSE frames."""
        self.num_events += len(events)
        chunks = []
        for event in events:
            chunk = self.convert(event)
            if type(chunk) is list:
                chunks += chunk
            elif chunk is not None:
                chunks.append(chunk)
        if not self.frames or not chunks:
            return chunks
        return [Burst(b"".join(map(encode_event, chunks)))]

    def convert(self, event: bytes | dict) -> bytes | dict | list[dict] | None:
        """The client's chunk for `event` (bytes only in passthrough), None to drop it, or
        two chunks when a choice chunk carried the usage."""
        if self.template is not None and type(event) is bytes:
            relayed = self.template.fill(event)
            if relayed is not None:
                return relayed
        chunk = event if isinstance(event, dict) else self.backend.decode_event(event)
        check_chunk(chunk, self.endpoint, self.backend.name)
        if not chunk["choices"]:
            usage = chunk.get("usage")
            if usage:
                self.num_output_tokens = usage.get("completion_tokens")
                if self.on_usage is not None:
                    self.on_usage(self.model, usage)
        elif chunk.get("usage"):
            return self._split_usage(chunk)
        elif "usage" not in chunk or self.include_usage:
            return self._renamed(event, chunk)         # nothing to change but the model
        chunk = usage_rules(chunk, self.include_usage)
        if chunk is not None:
            chunk["model"] = self.model
        return chunk

    def count_unfinished(self, prompt_tokens: int) -> None:
        """A stream that ended without a usage chunk (the client left, the backend broke or
        sends none): its tokens as estimated here (the prompt's estimate, one per event
        relayed), counted as a usage chunk is, so that a key's token limits see what was
        generated. A client that disconnected before the usage chunk was charged nothing."""
        if self.num_output_tokens is None and self.num_events and self.on_usage is not None:
            self.on_usage(self.model, {"prompt_tokens": prompt_tokens, "completion_tokens": self.num_events,
                                       "total_tokens": prompt_tokens + self.num_events})

    def _split_usage(self, chunk: dict) -> list[dict]:
        """llama.cpp puts a completion stream's usage on its last choice chunk; OpenAI sends it
        in a chunk of its own after it (choices == []), which is what the client gets."""
        usage_chunk = {key: chunk[key] for key in ("id", "object", "created", "system_fingerprint")
                       if key in chunk}
        usage_chunk.update(choices=[], usage=chunk.pop("usage"))
        if self.include_usage:
            chunk["usage"] = None
        chunk["model"] = self.model
        tail = self.convert(usage_chunk)
        return [chunk] if tail is None else [chunk, tail]

    def _renamed(self, event: bytes | dict, chunk: dict) -> bytes | dict:
        """The event with the client's model name: its own bytes where that is safe."""
        if self.frames and isinstance(event, bytes):
            upstream = chunk.get("model")
            if upstream == self.model:
                self.template = ContentTemplate.of(event, None, None)
                return event
            field = self._upstream_field(upstream, event)
            if field is not None and event.count(field) == 1:
                self.template = ContentTemplate.of(event, field, self.model_field)
                return event.replace(field, self.model_field)
        chunk["model"] = self.model
        return chunk

    def _upstream_field(self, upstream, event: bytes) -> bytes | None:
        """How the backend writes `"model": name` (compact or with a space), learnt once."""
        if self.upstream is None or self.upstream[0] != upstream:
            fields = [_model_field(upstream, sep) for sep in (b":", b": ")] if isinstance(upstream, str) else []
            self.upstream = (upstream, next((f for f in fields if f in event), None))
        return self.upstream[1]


def _model_field(name: str, separator: bytes) -> bytes:
    return b'"model"' + separator + wirejson.dumps(name)



CONTENT_KEYS = (b'"content":', b'"text":')          # a chat delta's text, a completion's
JSON_STRING_BODY = re.compile(rb'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')


class ContentTemplate:
    """A relayed event cut around the one JSON string that holds its text: `head` + text + `tail`.

    An event with the same head and tail and a well-formed JSON string body between them is
    the same JSON object but for that text, so every check the event passed holds for it, and
    its relayed bytes are the relayed head + its text + the relayed tail (the model field lies
    in the head or the tail: a string body has no bare quote)."""
    __slots__ = ("head", "tail", "out_head", "out_tail")

    def __init__(self, head: bytes, tail: bytes, field: bytes | None, renamed: bytes | None):
        self.head, self.tail = head, tail
        self.out_head = head if field is None else head.replace(field, renamed)
        self.out_tail = tail if field is None else tail.replace(field, renamed)

    @classmethod
    def of(cls, event: bytes, field: bytes | None, renamed: bytes | None) -> ContentTemplate | None:
        """The template of a relayed event with one text key (`"content":` or `"text":`)."""
        for key in CONTENT_KEYS:
            at = event.find(key)
            if at >= 0:
                break
        else:
            return None
        if event.count(key) != 1:
            return None
        start = at + len(key)
        while event[start:start + 1] in (b" ", b"\t", b"\n", b"\r"):
            start += 1
        if event[start:start + 1] != b'"':
            return None                                 # null, or not a string
        end = JSON_STRING_BODY.match(event, start + 1).end()
        return cls(event[:start + 1], event[end:], field, renamed)

    def fill(self, event: bytes) -> bytes | None:
        """The relayed bytes of `event` when it fits the template, else None."""
        head, tail = self.head, self.tail
        if not (event.startswith(head) and event.endswith(tail)) or len(event) < len(head) + len(tail):
            return None
        text = event[len(head):len(event) - len(tail)]
        if JSON_STRING_BODY.fullmatch(text) is None or not (text.isascii() or _utf8(text)):
            return None
        return self.out_head + text + self.out_tail


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
