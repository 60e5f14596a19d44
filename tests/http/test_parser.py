"""Table-driven tests of the sans-IO parser: every smuggling case is a row."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from velollmd.http.parser import Data, EndOfMessage, Head, HTTPParser, ProtocolError


def pull_events(parser: HTTPParser) -> list:
    """Every event the parser has for the bytes fed so far; fails on a step without progress.

    Progress: a Head or Data event consumes bytes, and an EndOfMessage comes only after bytes
    were consumed since the last one. So the loop is bounded by the bytes fed: a parser that
    stalls (an event that eats nothing, again and again) fails here instead of spinning."""
    events, num_consumed = [], 0          # bytes consumed since the last EndOfMessage
    while True:
        num_before = parser.buffered
        event = parser.next_event()
        if event is None:
            return events
        step = num_before - parser.buffered
        num_consumed += step
        ends = isinstance(event, EndOfMessage)
        assert step > 0 or (ends and num_consumed > 0), (
            f"parser made no progress: {event!r} consumed no bytes after {len(events)} events "
            f"(state {parser._state}, {parser.buffered} bytes buffered)")
        num_consumed = 0 if ends else num_consumed
        events.append(event)


def parse_all(raw: bytes, role="server", eof=True, methods=(), **limits):
    parser = HTTPParser(role, **limits)
    for method in methods:
        parser.expect_response(method)
    parser.feed(raw)
    if eof:
        parser.feed_eof()
    return pull_events(parser)


def messages(events):
    """[(head, body, trailers)] from a list of events."""
    out, head, body = [], None, b""
    for event in events:
        if isinstance(event, Head):
            head, body = event, b""
        elif isinstance(event, Data):
            body += event.data
        elif isinstance(event, EndOfMessage):
            out.append((head, body, event.trailers))
    return out


H = b"Host: a\r\n"
POST = b"POST / HTTP/1.1\r\n" + H       # a request line and its Host, the rest follows
GET = b"GET / HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def chunk_size_line(line: bytes) -> bytes:
    """A chunked body whose first chunk announces its 5 bytes with `line`."""
    return CHUNKED + line + b"\r\nhello\r\n0\r\n\r\n"


def field_line(line: bytes) -> bytes:
    """A GET with Host and one more header field line."""
    return GET + line + b"\r\n\r\n"


def request_line(line: bytes) -> bytes:
    """A request with this request line, a Host and nothing else."""
    return line + b"\r\n" + H + b"\r\n"


VALID = [
    ("simple GET", GET + b"\r\n", "GET", b""),
    ("content-length body", b"POST /x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", "POST", b"hello"),
    ("chunked body", CHUNKED + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "POST", b"hello world"),
    ("chunked upper hex + ext", CHUNKED + b"A;name=v\r\n0123456789\r\n0\r\n\r\n", "POST", b"0123456789"),
    ("chunked with trailer", CHUNKED + b"1\r\nx\r\n0\r\nX-T: 1\r\n\r\n", "POST", b"x"),
    ("TE case-insensitive", POST + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", "POST", b""),
    ("HTTP/1.0 without host", b"GET / HTTP/1.0\r\n\r\n", "GET", b""),
    ("leading empty line", b"\r\n" + GET + b"\r\n", "GET", b""),
    ("identical duplicate CL", POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", "POST", b"ok"),
    ("header value OWS trimmed", POST + b"Content-Length:\t 2 \t\r\n\r\nok", "POST", b"ok"),
    ("zero CL", POST + b"Content-Length: 0\r\n\r\n", "POST", b""),
    ("obs-text in value", GET + b"X-A: caf\xc3\xa9\r\n\r\n", "GET", b""),
]


@pytest.mark.parametrize("name,raw,method,body", VALID, ids=[v[0] for v in VALID])
def test_valid_requests(name, raw, method, body):
    [(head, got_body, _)] = messages(parse_all(raw))
    assert head.method == method
    assert got_body == body


BAD = [
    # smuggling: framing conflicts
    ("CL and TE", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two different CL", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("CL list", POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("CL plus sign", POST + b"Content-Length: +5\r\n\r\nhello", 400),
    ("CL hex", POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("CL underscore", POST + b"Content-Length: 1_0\r\n\r\n0123456789", 400),
    ("CL unicode digits", POST + "Content-Length: \u0665\r\n\r\n".encode() + b"hello", 400),
    ("CL negative", POST + b"Content-Length: -1\r\n\r\n", 400),
    ("CL 20 digits", POST + b"Content-Length: 00000000000000000001\r\n\r\nx", 400),
    ("CL empty", POST + b"Content-Length: \r\n\r\n", 400),
    ("TE gzip", POST + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("TE chunked not last", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE chunked twice", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked twice in two headers", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE identity", POST + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("TE with vertical tab", POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunk size not hex", chunk_size_line(b"zz"), 400),
    ("chunk size 0x prefix", chunk_size_line(b"0x5"), 400),
    ("chunk size plus", chunk_size_line(b"+5"), 400),
    ("chunk size too long", chunk_size_line(b"00000000000000005"), 400),
    ("chunk size leading space", chunk_size_line(b" 5"), 400),
    ("chunk data without CRLF", CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk size bare LF", CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    # header syntax
    ("space before colon", field_line(b"Content-Length : 0"), 400),
    ("obs-fold", field_line(b"X-A: 1\r\n  continued"), 400),
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF in one header line", b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400),
    ("bare CR in value", field_line(b"X-A: 1\r2"), 400),
    ("NUL in value", field_line(b"X-A: a\x00b"), 400),
    ("control byte in name", field_line(b"X\x01A: 1"), 400),
    ("non-token byte in name", field_line(b"X(A): 1"), 400),
    ("empty header name", field_line(b": 1"), 400),
    ("no colon", field_line(b"X-A 1"), 400),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # request line
    ("bad method token", request_line(b"G@T / HTTP/1.1"), 400),
    ("lowercase version", request_line(b"GET / http/1.1"), 400),
    ("HTTP/2.0", request_line(b"GET / HTTP/2.0"), 505),
    ("HTTP/1.2", request_line(b"GET / HTTP/1.2"), 505),
    ("two spaces in request line", request_line(b"GET  / HTTP/1.1"), 400),
    ("missing version", request_line(b"GET /"), 400),
    ("control byte in target", request_line(b"GET /a\x7fb HTTP/1.1"), 400),
    ("request line too long", request_line(b"GET /" + b"a" * 8200 + b" HTTP/1.1"), 414),
    # limits
    ("headers too large", GET + b"X-A: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("too many fields", GET + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
    ("body too large", POST + b"Content-Length: 1000001\r\n\r\n", 413),
    ("chunked body too large", CHUNKED + b"FFFFFFFF\r\n", 413),
    # truncation
    ("eof inside body", POST + b"Content-Length: 10\r\n\r\nabc", 400),
    ("eof inside head", b"GET / HTTP/1.1\r\nHo", 400),
]


@pytest.mark.parametrize("name,raw,status", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_raise_with_status(name, raw, status):
    with pytest.raises(ProtocolError) as info:
        parse_all(raw, max_body_bytes=1_000_000)
    assert info.value.status == status


def test_body_limit_is_checked_before_reading_the_body():
    parser = HTTPParser("server", max_body_bytes=10)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status == 413


def test_pipelined_requests_come_out_in_order():
    raw = (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
           b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
           b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
    got = [(h.target, body) for h, body, _ in messages(parse_all(raw))]
    assert got == [("/1", b""), ("/2", b"abc"), ("/3", b"z")]


def test_byte_by_byte_feeding_gives_the_same_events():
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    parser = HTTPParser("server")
    events = []
    for i in range(len(raw)):
        parser.feed(raw[i:i + 1])
        events += pull_events(parser)
    [(head, body, _)] = messages(events)
    assert (head.target, body) == ("/x", b"abcde")


@pytest.mark.parametrize("split", range(0, 12))
def test_take_body_waits_for_all_of_it_and_leaves_the_next_request(split):
    body = b"0123456789"
    raw = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    parser = HTTPParser("server")
    parser.feed(raw + body[:split])
    assert parser.next_event().target == "/1"
    if split < len(body):
        num_buffered = parser.buffered
        assert parser.take_body() is None and parser.buffered == num_buffered   # nothing taken
        parser.feed(body[split:])
    parser.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parser.take_body() == body
    assert parser.next_event().target == "/2"                 # the message ended with it
    assert isinstance(parser.next_event(), EndOfMessage)


def test_take_body_gives_no_chunked_body_and_an_empty_one_at_once():
    parser = HTTPParser("server")
    parser.feed(CHUNKED + b"1\r\nz\r\n0\r\n\r\n" + GET + b"\r\n")
    parser.next_event()
    assert parser.take_body() is None                         # chunked: the events read it
    assert [type(e) for e in pull_events(parser)] == [Data, EndOfMessage, Head, EndOfMessage]
    parser = HTTPParser("server")
    parser.feed(POST + b"Content-Length: 0\r\n\r\n")
    parser.next_event()
    assert parser.take_body() == b"" and parser.between_messages


def test_a_chunks_closing_crlf_is_taken_with_its_data():
    parser = HTTPParser("server")
    parser.feed(CHUNKED + b"3\r\nabc\r\n")
    parser.next_event()
    assert parser.next_event() == Data(b"abc")
    assert parser.buffered == 0 and parser.next_event() is None
    parser.feed(b"2\r\nde\r\n0\r\n\r\n")
    assert pull_events(parser) == [Data(b"de"), EndOfMessage()]


@pytest.mark.parametrize("raw,keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    # Connection is a list of tokens (RFC 9110 7.6.1), matched whole and case-insensitively
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-close-later\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: TE, Close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive-ish\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: Upgrade ,\tKeep-Alive\r\n\r\n", True),
])
def test_keep_alive_rules(raw, keep_alive):
    [(head, _, _)] = messages(parse_all(raw))
    assert head.keep_alive is keep_alive


@pytest.mark.parametrize("target,expected", [
    (b"/v1/models?x=1", "/v1/models?x=1"),
    (b"http://127.0.0.1:8000/v1/models?x=1", "/v1/models?x=1"),     # absolute form (RFC 9112 3.2.2)
    (b"HTTPS://example.com/api/tags", "/api/tags"),
    (b"http://example.com", "/"),
    (b"http://example.com?q=1", "/?q=1"),
    (b"*", "*"),                                                      # asterisk form: left for the routes
    (b"ftp://example.com/x", "ftp://example.com/x"),
])
def test_a_target_comes_out_in_origin_form(target, expected):
    [(head, _, _)] = messages(parse_all(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert head.target == expected


@pytest.mark.parametrize("version,expected", [(b"1.1", True), (b"1.0", False)])   # 1.0 knows no 1xx
def test_expect_continue_flag(version, expected):
    raw = b"POST / HTTP/%s\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx" % version
    [(head, _, _)] = messages(parse_all(raw))
    assert head.expect_continue is expected


def test_header_names_are_lower_case_and_values_trimmed():
    [(head, _, _)] = messages(parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Thing:   v 1  \r\n\r\n"))
    assert head.get("x-thing") == "v 1"


# -- client role --------------------------------------------------------------------------

def client_messages(raw: bytes, methods=("GET",)):
    return messages(parse_all(raw, "client", methods=methods))


def test_client_reads_until_close_without_framing():
    [(head, body, _)] = client_messages(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
    assert (head.status, body, head.keep_alive) == (200, b"all of it", False)


def test_client_head_and_204_have_no_body():
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
           b"HTTP/1.1 204 No Content\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    got = [(h.status, b) for h, b, _ in client_messages(raw, ("HEAD", "DELETE", "GET"))]
    assert got == [(200, b""), (204, b""), (200, b"ok")]


def test_client_skips_informational_responses():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    got = [(h.status, b) for h, b, _ in client_messages(raw, ("POST",))]
    assert got == [(100, b""), (201, b"x")]


def test_client_rejects_garbage_status_line_as_bad_gateway():
    with pytest.raises(ProtocolError) as info:
        client_messages(b"HTTP/1.1 2000 OK\r\n\r\n")
    assert info.value.status == 502


# -- fuzzing ------------------------------------------------------------------------------

SEEDS = [row[1] for row in VALID + BAD if len(row[1]) < 2000]


def _mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte in edits:
        pos = pos % (len(buf) + 1)
        if kind == 0:
            buf.insert(pos, byte)
        elif kind == 1 and buf:
            del buf[pos % len(buf)]
        elif buf:
            buf[pos % len(buf)] = byte
    return bytes(buf)


def _drive(raw: bytes, split: int) -> None:
    """Feed `raw` in two pieces, then EOF: the parser either raises a ProtocolError with an
    error status or ends between messages, making progress at every step (pull_events)."""
    parser = HTTPParser("server", max_header_bytes=4096, max_body_bytes=100_000)
    try:
        for piece in (raw[:split], raw[split:]):
            parser.feed(piece)
            pull_events(parser)
        parser.feed_eof()
        pull_events(parser)
    except ProtocolError as exc:
        assert 400 <= exc.status < 600
        return
    assert parser.between_messages, f"input ended mid-message without an error: {raw!r}"


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(SEEDS),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4000), st.integers(0, 255)), max_size=6),
       st.integers(0, 4000))
def test_fuzz_mutated_requests_only_raise_protocol_errors(seed, edits, split):
    raw = _mutate(seed, edits)
    _drive(raw, split % (len(raw) + 1))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 600))
def test_fuzz_random_bytes_only_raise_protocol_errors(raw, split):
    _drive(raw, split % (len(raw) + 1))


def test_take_data_gives_every_buffered_chunk_in_one_call_and_the_end_after_it():
    from velollmd.http.parser import HTTPParser
    parser = HTTPParser("client")
    parser.expect_response("POST")
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n1\r\n")
    parser.next_event()
    parts = []
    assert parser.take_data(parts) is False and parts == [b"abc", b"de"]
    parser.feed(b"f\r\n0\r\n\r\n")
    assert parser.take_data(parts) is True and parts == [b"abc", b"de", b"f"]
    assert parser.between_messages
