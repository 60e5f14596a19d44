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
"""
from __future__ import annotations

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

    def convert_batch(self, events: list[bytes] | list[dict]) -> list[dict] | list[Burst]:
        """The client's chunks for one backend read; in passthrough, one Burst of SSE frames."""
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
                return event
            field = self._upstream_field(upstream, event)
            if field is not None and event.count(field) == 1:
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

