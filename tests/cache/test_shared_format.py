"""The shared tier's entry format: round trip; foreign, cut or altered values are misses."""
import math

import pytest

from velollmd.cache.exact import CachedResponse
from velollmd.cache.shared_format import MAGIC, decode_entry, encode_entry

ENTRY = CachedResponse(model="m", content="héllo", usage={"prompt_tokens": 3, "completion_tokens": 1})


def test_round_trip_keeps_entry_and_expiry():
    assert decode_entry(encode_entry(ENTRY, 1234.5)) == (ENTRY, 1234.5)
    assert decode_entry(encode_entry(ENTRY, math.inf)) == (ENTRY, math.inf)


@pytest.mark.parametrize("data", [
    b"", b"plain value", MAGIC, encode_entry(ENTRY, 1.0)[:-1], encode_entry(ENTRY, 1.0) + b" ",
    encode_entry(ENTRY, 1.0).replace(b"h\xc3\xa9llo", b"hallo!"), b"VLC2" + encode_entry(ENTRY, 1.0)[4:],
    "not bytes", None,
])
def test_foreign_or_corrupt_values_are_misses(data):
    assert decode_entry(data) is None
