"""The shared tier: several velollmd instances share one exact cache, single-flight and key
limits on a Redis server, over a RESP client of the project's own (resp.py, client.py)."""
