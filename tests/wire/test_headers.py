from velollmd.http.message import Request
from velollmd.wire.headers import header_value


def test_pairs_from_the_wire_are_matched_exactly_and_first_wins():
    pairs = [("content-type", "a"), ("x-a", "1"), ("x-a", "2")]
    assert header_value(pairs, "x-a") == "1"
    assert header_value(pairs, "x-b", "none") == "none"
    assert header_value(None, "x-a") is None


def test_a_dict_from_a_caller_folds_case():
    assert header_value({"Cache-Control": "no-store"}, "cache-control") == "no-store"
    assert header_value({"cache-control": "x"}, "cache-control") == "x"
    assert header_value({"other": "x"}, "cache-control", "") == ""


def test_a_request_finds_what_header_value_finds_over_several_lookups():
    """Request.header keeps a dict of the fields after its first lookup: the first value wins
    there as in header_value, for every name asked."""
    pairs = [("x-a", "1"), ("x-b", "upper"), ("x-c", "3"), ("x-a", "2"), ("x-b", "lower")]
    request = Request("GET", "/", pairs)
    for name in ("x-a", "x-b", "x-c", "x-d", "x-a"):
        assert request.header(name) == header_value(pairs, name)
    assert request.header("x-d", "none") == "none"
