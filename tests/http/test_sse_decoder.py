"""SSEDecoder: the payloads of Server-Sent Events, however the bytes are cut into reads."""
import pytest

from velollmd.http.sse import SSEDecoder

STREAM = (b'data: {"a":1}\n\n: ping\n\nevent: x\nid: 7\ndata: {"b":\ndata: 2}\n\n'
          b'data:{"c":3}\n\n\n\ndata: [DONE]\n\n')
EXPECTED = [b'{"a":1}', b'{"b":\n2}', b'{"c":3}', b"[DONE]"]


def decode(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    out = [payload for piece in pieces for payload in decoder.feed(piece)]
    return out + decoder.end()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_cut_of_the_stream_gives_the_same_payloads(newline):
    stream = STREAM.replace(b"\n", newline)
    assert decode([stream]) == EXPECTED
    for cut in range(1, len(stream)):                 # two reads, cut anywhere (mid-CRLF too)
        assert decode([stream[:cut], stream[cut:]]) == EXPECTED, cut
    assert decode([bytes([b]) for b in stream]) == EXPECTED   # one byte per read


def test_one_read_of_several_events_is_one_batch():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: 1\n\ndata: 2\n\ndata: 3') == [b"1", b"2"]
    assert decoder.feed(b"\n\n") == [b"3"]
    assert decoder.feed(b": comment only\n\n") == []


def test_an_event_cut_short_by_the_end_of_the_body_is_still_delivered():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x":1}\r') == []
    assert decoder.end() == [b'{"x":1}']
    assert decoder.end() == []
