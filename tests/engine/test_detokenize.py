"""TextStream: incremental UTF-8 and stop strings across token boundaries."""
from __future__ import annotations

import pytest

from velollmd.engine.detokenize import TextStream


def feed(stream: TextStream, tokens: list[bytes]) -> list[str]:
    """What push() returned for each token, then what finish() returned."""
    return [stream.push(t) for t in tokens] + [stream.finish()]


def test_no_stops_passes_text_through_at_once():
    stream = TextStream()
    assert feed(stream, [b"Hello", b" wor", b"ld"]) == ["Hello", " wor", "ld", ""]
    assert not stream.stopped and stream.stop_string is None


def test_empty_stop_strings_are_ignored():
    stream = TextStream(["", ""])
    assert feed(stream, [b"a", b"b"]) == ["a", "b", ""]
    assert not stream.stopped


def test_emoji_split_into_four_byte_tokens_is_held_until_complete():
    emoji = "\N{GRINNING FACE}".encode()
    assert len(emoji) == 4
    stream = TextStream()
    pieces = feed(stream, [b"x", *[bytes([b]) for b in emoji], b"y"])
    assert pieces == ["x", "", "", "", "\N{GRINNING FACE}", "y", ""]


def test_incomplete_utf8_at_the_end_is_flushed_as_replacement():
    stream = TextStream()
    assert stream.push(b"a\xf0\x9f") == "a"
    assert stream.finish() == "\ufffd"


def test_invalid_byte_mid_stream_is_replaced_not_held():
    stream = TextStream()
    assert stream.push(b"a\xffb") == "a\ufffdb"


def test_stop_split_across_two_tokens():
    stream = TextStream(["</s>"])
    assert stream.push(b"Hello <") == "Hello "
    assert stream.push(b"/s> and more") == ""
    assert stream.stopped and stream.stop_string == "</s>"
    assert stream.push(b"after") == "" and stream.finish() == ""


def test_stop_split_across_three_tokens_keeps_the_text_before_it():
    stream = TextStream(["STOP"])
    assert feed(stream, [b"ab S", b"TO", b"P cd"]) == ["ab ", "", "", ""]
    assert stream.stopped


def test_a_stop_that_never_completes_releases_the_held_text():
    stream = TextStream(["</s>"])
    assert stream.push(b"a<") == "a"
    assert stream.push(b"/") == ""
    assert stream.push(b"x") == "</x"
    assert stream.push(b" </") == " "
    assert stream.finish() == "</"
    assert not stream.stopped


def test_held_tail_shrinks_to_the_longest_prefix_that_can_still_match():
    stream = TextStream(["aab"])
    assert stream.push(b"xa") == "x"
    assert stream.push(b"a") == ""         # "aa" could still become "aab"
    assert stream.push(b"a") == "a"        # "aaa": only the last "aa" can
    assert stream.push(b"b") == ""
    assert stream.stopped


def test_overlapping_stops_the_first_to_complete_wins():
    stream = TextStream(["abcd", "bc"])
    assert feed(stream, [b"a", b"b", b"c", b"d"]) == ["", "", "a", "", ""]
    assert stream.stop_string == "bc"


def test_overlapping_stops_completed_by_one_push_the_earliest_start_wins():
    stream = TextStream(["cde", "abcd"])
    assert feed(stream, [b"xab", b"cde"]) == ["x", "", ""]
    assert stream.stop_string == "abcd"


def test_stop_at_the_very_first_token():
    stream = TextStream(["Hi"])
    assert stream.push(b"Hi there") == ""
    assert stream.stopped and stream.finish() == ""


def test_stop_made_of_a_multibyte_char_split_over_byte_tokens():
    stream = TextStream(["\u00e9!"])
    e_acute = "\u00e9".encode()
    assert feed(stream, [b"caf", e_acute[:1], e_acute[1:], b"!", b"x"]) == ["caf", "", "", "", "", ""]
    assert stream.stopped


@pytest.mark.parametrize("stops", [(), ("lazy",), ("fox ", "z d", "dog")])
def test_any_split_of_the_bytes_emits_the_text_up_to_the_first_stop(stops):
    text = "the quick brown fox \N{FOX FACE} jumps over the lazy d\u00f6g"
    data = text.encode()
    cuts = [text.find(s) for s in stops if s in text]
    expected = text[:min(cuts)] if cuts else text
    for size in (1, 2, 3, 5, 7):
        stream = TextStream(stops)
        tokens = [data[i:i + size] for i in range(0, len(data), size)]
        assert "".join(feed(stream, tokens)) == expected, size
        assert stream.stopped == bool(cuts)
