"""Ollama's keep_alive values as Ollama reads them: seconds, Go durations, negative for good."""
import math

import pytest

from velollmd.wire.ollama import keep_alive_seconds


@pytest.mark.parametrize("value,seconds", [
    (None, None), (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), (2.5, 2.5), ("10", 10.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("2m30s", 150.0),
    (-1, math.inf), ("-1", math.inf), ("-5m", math.inf),
])
def test_durations_and_seconds(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "abc", "5x", "5 m", "m5", "1h-30m", True, [1], {"s": 1}, float("nan"), "inf"])
def test_anything_else_is_refused(value):
    with pytest.raises(ValueError, match="keep_alive"):
        keep_alive_seconds(value)
