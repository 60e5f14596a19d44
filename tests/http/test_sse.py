from tests.aio import run
from velollmd.errors import BackendError
from velollmd.http.sse import DONE, encode_event, sse_frames


async def collect(stream):
    return [frame async for frame in stream]


def test_frames_end_with_done():
    async def events():
        yield {"a": 1}
        yield b'{"raw":true}'
    frames = run(collect(sse_frames(events())))
    assert frames == [b'data: {"a":1}\n\n', b'data: {"raw":true}\n\n', DONE]


def test_error_midway_is_an_error_event_without_done():
    async def events():
        yield {"ok": 1}
        raise BackendError("backend went away")
    frames = run(collect(sse_frames(events())))
    assert frames[0] == b'data: {"ok":1}\n\n'
    assert frames[1].startswith(b'data: {"error":{"message":"backend went away"')
    assert DONE not in frames


def test_encode_event_keeps_unicode():
    assert encode_event({"t": "héllo"}) == 'data: {"t":"héllo"}\n\n'.encode()
