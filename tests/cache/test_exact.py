from velollmd.cache.exact import CachedResponse, ExactCache


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def entry(text="x", n=1):
    return CachedResponse(model="m", content=text * n)


def test_lru_by_entries_evicts_least_recent():
    cache = ExactCache(max_entries=2, max_bytes=10**6)
    cache.put("a", entry("a"))
    cache.put("b", entry("b"))
    assert cache.get("a").content == "a"          # a becomes most recent
    cache.put("c", entry("c"))
    assert cache.get("b") is None
    assert [k for k, _, _ in cache.items()] == ["a", "c"]
    assert cache.stats.num_evictions == 1


def test_lru_by_bytes():
    size = entry("x", 1000).nbytes()
    cache = ExactCache(max_entries=100, max_bytes=size * 2 + 10)
    for k in "abc":
        cache.put(k, entry("x", 1000))
    assert len(cache) == 2 and cache.get("a") is None
    assert cache.num_bytes == 2 * size <= cache.max_bytes


def test_entry_larger_than_max_bytes_is_rejected():
    cache = ExactCache(max_entries=10, max_bytes=100)
    assert cache.put("a", entry("x", 1000)) is False
    assert len(cache) == 0 and cache.num_bytes == 0


def test_replace_updates_bytes():
    cache = ExactCache(max_entries=10, max_bytes=10**6)
    cache.put("a", entry("x", 10))
    cache.put("a", entry("x", 500))
    assert len(cache) == 1 and cache.num_bytes == entry("x", 500).nbytes()


def test_ttl_expiry_with_injected_clock():
    clock = FakeClock()
    cache = ExactCache(max_entries=10, max_bytes=10**6, ttl_s=60, clock=clock)
    cache.put("a", entry())
    clock.now += 59.9
    assert cache.get("a") is not None
    clock.now += 0.2
    assert cache.get("a") is None
    assert cache.stats.num_expired == 1 and cache.num_bytes == 0


def test_ttl_zero_never_expires():
    clock = FakeClock()
    cache = ExactCache(max_entries=10, max_bytes=10**6, ttl_s=0, clock=clock)
    cache.put("a", entry())
    clock.now += 10**9
    assert cache.get("a") is not None


def test_max_entries_zero_disables():
    cache = ExactCache(max_entries=0, max_bytes=10**6)
    assert not cache.put("a", entry()) and cache.get("a") is None


def test_dict_round_trip():
    e = CachedResponse(model="m", content="c", tool_calls=({"id": "1", "type": "function",
                       "function": {"name": "f", "arguments": "{}"}},), usage={"total_tokens": 3},
                       chunk_sizes=(1,))
    assert CachedResponse.from_dict(e.to_dict()) == e
