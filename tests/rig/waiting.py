"""Polling for a condition that another thread or process makes true."""
import time


def wait_for(predicate, limit_s=5.0) -> bool:
    """Whether `predicate()` held within `limit_s` (polled every 20 ms; the limit only bounds a hang)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
