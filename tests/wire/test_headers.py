from velollmd.wire.headers import header_value, header_values


def test_pairs_from_the_wire_are_matched_exactly_and_first_wins():
    pairs = [("content-type", "a"), ("x-a", "1"), ("x-a", "2")]
    assert header_value(pairs, "x-a") == "1"
    assert header_value(pairs, "x-b", "none") == "none"
    assert header_value(None, "x-a") is None


def test_a_dict_from_a_caller_folds_case():
    assert header_value({"Cache-Control": "no-store"}, "cache-control") == "no-store"
    assert header_value({"cache-control": "x"}, "cache-control") == "x"
    assert header_value({"other": "x"}, "cache-control", "") == ""


def test_several_names_in_one_pass_find_what_header_value_finds():
    pairs = [("x-a", "1"), ("X-B", "upper"), ("x-c", "3"), ("x-a", "2"), ("x-b", "lower")]
    names = frozenset({"x-a", "x-b", "x-d"})
    assert header_values(pairs, names) == {"x-a": "1", "x-b": "lower"}
    assert all(header_values(pairs, names).get(n) == header_value(pairs, n) for n in names)
