"""Response cache: exact (blake2b keys, LRU) and semantic (numpy cosine) tiers.

Public API: ResponseCache / Lookup (cache.py), CachedResponse (exact.py), replay functions
(replay.py), key functions (keys.py), policy functions (policy.py).
"""
from .cache import Lookup, ResponseCache
from .exact import CachedResponse, ExactCache
from .replay import from_json_response, from_stream_chunks, to_json, to_sse_chunks

__all__ = ["CachedResponse", "ExactCache", "Lookup", "ResponseCache", "from_json_response",
           "from_stream_chunks", "to_json", "to_sse_chunks"]
