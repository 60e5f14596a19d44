"""ChunkRelay: what the client gets for each backend stream event, and when the backend's own
bytes pass through untouched (but for the model name)."""
import json

import pytest

from velollmd.backends.openai import OpenAIBackend
from velollmd.config import config_from_table
from velollmd.core.relay import ChunkRelay
from velollmd.errors import BackendError
from velollmd.http.message import Burst
from velollmd.wire.chunks import usage_rules
from velollmd.wire.outcome import Delivery

BACKEND = OpenAIBackend(config_from_table({"backends": [
    {"name": "b", "kind": "openai", "url": "http://127.0.0.1:9", "models": ["*"]}]}).backends[0])
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def chunk(content="hi", model="served-name", **extra) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], **extra}


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def relay(include_usage=False, passthrough=True, model="asked-for"):
    counted = []
    delivery = Delivery(include_usage, lambda m, u: counted.append((m, u)), frames=passthrough)
    return ChunkRelay(BACKEND, model, "chat", delivery), counted


@pytest.mark.parametrize("encode", [compact, lambda v: json.dumps(v).encode()])   # ":" and ": "
def test_a_plain_chunk_passes_as_its_own_bytes_with_the_model_renamed(encode):
    out, _ = relay()
    event = encode(chunk("say \"model\": \"served-name\" twice"))
    converted = out.convert(event)
    assert isinstance(converted, bytes)
    assert json.loads(converted) == chunk("say \"model\": \"served-name\" twice", model="asked-for")
    assert converted.replace(b'"model":"asked-for"', b"") == event.replace(
        b'"model":"served-name"', b"").replace(b'"model": "served-name"', b"")


def test_the_same_model_name_passes_the_bytes_unchanged():
    out, _ = relay(model="served-name")
    event = compact(chunk())
    assert out.convert(event) is event


def test_a_model_field_found_twice_or_not_at_all_falls_back_to_a_dict():
    out, _ = relay()
    nested = compact({**chunk(), "extra": {"model": "served-name"}})
    assert out.convert(nested)["model"] == "asked-for"
    out, _ = relay()
    assert out.convert(compact({k: v for k, v in chunk().items() if k != "model"}))["model"] == "asked-for"


def test_without_passthrough_every_chunk_is_a_dict():
    out, _ = relay(passthrough=False)
    assert out.convert(compact(chunk())) == chunk(model="asked-for")
    assert out.convert(chunk()) == chunk(model="asked-for")


def test_the_usage_chunk_is_counted_and_kept_only_when_asked_for():
    usage_chunk = {**chunk(), "choices": [], "usage": USAGE}
    out, counted = relay(include_usage=False)
    assert out.convert(compact(usage_chunk)) is None
    assert counted == [("asked-for", USAGE)]
    out, counted = relay(include_usage=True)
    assert out.convert(compact(usage_chunk)) == {**usage_chunk, "model": "asked-for"}
    assert counted == [("asked-for", USAGE)]


def test_usage_on_a_choice_chunk_moves_to_a_usage_chunk_of_its_own():
    """llama.cpp's completion streams carry usage on the last choice chunk; OpenAI clients
    look for it in a chunk with `choices: []` after it."""
    event = compact(chunk(usage=USAGE, system_fingerprint="b1"))
    out, counted = relay(include_usage=False)
    assert out.convert(event) == [chunk(model="asked-for", system_fingerprint="b1")]
    assert counted == [("asked-for", USAGE)]
    out, counted = relay(include_usage=True)
    head, tail = out.convert(event)
    assert head == chunk(model="asked-for", system_fingerprint="b1", usage=None)
    assert tail == {"id": "c1", "object": "chat.completion.chunk", "created": 1, "system_fingerprint": "b1",
                    "choices": [], "usage": USAGE, "model": "asked-for"}
    assert counted == [("asked-for", USAGE)]
    [burst] = out.convert_batch([event])
    assert [json.loads(f[6:]).get("usage") for f in burst.split(b"\n\n")[:-1]] == [None, USAGE]


def test_null_usage_on_an_ordinary_chunk_stays_only_when_usage_was_asked_for():
    out, _ = relay(include_usage=False)
    assert "usage" not in out.convert(compact(chunk(usage=None)))
    out, _ = relay(include_usage=True)
    assert json.loads(out.convert(compact(chunk(usage=None))))["usage"] is None
    assert usage_rules(chunk(usage=None), include_usage=False) == chunk()


def test_error_events_and_broken_shapes_raise_backend_errors():
    out, _ = relay()
    for event in (b'{"error": {"message": "boom"}}', b"not json", b"[1,2]", b'{"choices": "x"}'):
        with pytest.raises(BackendError):
            out.convert(event)


def test_a_batch_becomes_one_burst_of_sse_frames():
    out, _ = relay()
    batch = [compact(chunk("a")), compact({**chunk(), "choices": [], "usage": USAGE}), compact(chunk("b"))]
    [burst] = out.convert_batch(batch)
    assert type(burst) is Burst
    frames = burst.split(b"\n\n")
    assert frames[-1] == b"" and all(f.startswith(b"data: ") for f in frames[:-1])
    assert [json.loads(f[6:])["choices"][0]["delta"]["content"] for f in frames[:-1]] == ["a", "b"]
    assert out.convert_batch([compact({**chunk(), "choices": [], "usage": USAGE})]) == []


@pytest.mark.parametrize("encode", [compact, lambda v: json.dumps(v).encode()])
def test_events_that_differ_only_in_their_text_are_relayed_without_decoding(encode, monkeypatch):
    out, _ = relay()
    out.convert(encode(chunk("first")))                     # learns the template
    events = [encode(chunk(text)) for text in ("a", "", "say \"model\": \"served-name\"", "caf\u00e9 \u2603",
                                                "back\\slash\n\t")]
    expected = [relay()[0].convert(event) for event in events]      # what a fresh relay makes of them
    decoded = []
    monkeypatch.setattr(out.backend, "decode_event", lambda data: decoded.append(data) or json.loads(data))
    assert [out.convert(event) for event in events] == expected
    assert decoded == []
    for event in (encode(chunk("x", model="other")), encode({**chunk(), "created": 2})):
        assert json.loads(out.convert(event))["model"] == "asked-for"
    assert len(decoded) == 2                                 # another head: decoded, learnt again


def test_an_event_that_only_looks_like_the_template_is_decoded_and_refused():
    out, _ = relay()
    template = compact(chunk("ok"))
    out.convert(template)
    head, tail = template.split(b'"ok"')
    for text in (b'a"b', b"a\\", b"\x01", b"\xff\xfe"):          # a bare quote, a broken escape,
        with pytest.raises(BackendError):                       # a control byte, not UTF-8
            out.convert(head + b'"' + text + b'"' + tail)
    with pytest.raises(BackendError):
        out.convert(b'{"error": {"message": "boom"}}')
    for text in ("fine", "caf\u00e9"):                      # raw UTF-8 is JSON too
        relayed = out.convert(head + b'"' + text.encode() + b'"' + tail)
        assert json.loads(relayed)["choices"][0]["delta"]["content"] == text
