"""RESP2/RESP3 parsing without a server: every reply type, split at every byte."""
import pytest

from velollmd.shared.resp import INCOMPLETE, ProtocolError, Push, ReplyError, RespParser, encode_command

REPLIES = [
    (b"+OK\r\n", "OK"),
    (b"-ERR unknown command\r\n", ReplyError("ERR unknown command")),
    (b":-42\r\n", -42),
    (b"$5\r\nh\r\nlo\r\n", b"h\r\nlo"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*3\r\n:1\r\n$1\r\n\x00\r\n*1\r\n+x\r\n", [1, b"\x00", ["x"]]),
    (b"_\r\n", None),
    (b"#t\r\n", True),
    (b",1.5\r\n", 1.5),
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"=7\r\ntxt:abc\r\n", b"abc"),
    (b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n:2\r\n", {"a": 1, b"b": 2}),
    (b"~2\r\n:1\r\n:2\r\n", {1, 2}),
    (b"!9\r\nERR boom!\r\n", ReplyError("ERR boom!")),
    (b"|1\r\n+ttl\r\n:3\r\n:7\r\n", 7),
]


def _same(a, b) -> bool:
    if isinstance(a, ReplyError):
        return isinstance(b, ReplyError) and a.args == b.args
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("data,expected", REPLIES)
def test_each_reply_type_at_every_split(data, expected):
    for cut in range(len(data)):
        parser = RespParser()
        parser.feed(data[:cut])
        assert parser.next() is INCOMPLETE
        parser.feed(data[cut:])
        assert _same(parser.next(), expected)
        assert parser.next() is INCOMPLETE


def test_replies_come_in_order_and_push_is_marked():
    parser = RespParser()
    parser.feed(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nd\r\n:1\r\n:2\r\n")
    push = parser.next()
    assert isinstance(push, Push) and push == [b"message", b"c", b"d"]
    assert [parser.next(), parser.next(), parser.next()] == [1, 2, INCOMPLETE]


def test_error_reply_code():
    assert ReplyError("NOSCRIPT No matching script").code == "NOSCRIPT"


@pytest.mark.parametrize("data", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcde\r\n", b"#x\r\n"])
def test_garbage_is_a_protocol_error(data):
    parser = RespParser()
    parser.feed(data)
    with pytest.raises(ProtocolError):
        parser.next()


def test_encode_command_binary_safe():
    assert encode_command("SET", b"k\r\n", 12, 1.5) == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    with pytest.raises(TypeError):
        encode_command("SET", None)
