"""[[keys]] tables: what a good one gives, and one ConfigError naming the key for each bad one."""
import hashlib

import pytest

from velollmd.config import KeyConfig, config_from_table
from velollmd.errors import ConfigError

DIGEST = hashlib.sha256(b"sk-bob").hexdigest()


def test_named_keys_with_limits_and_digests():
    config = config_from_table({"keys": [
        {"name": "alice", "key": "sk-alice", "priority": 1, "rpm": 5, "tpm": 1000, "models": ["llama3*"]},
        {"name": "bob", "key_sha256": DIGEST},
    ]})
    alice, bob = config.keys
    assert (alice.rpm, alice.tpm, alice.tokens_per_day, alice.priority) == (5, 1000, 0, 1)
    assert alice.models == ("llama3*",)
    assert bob == KeyConfig(name="bob", key_sha256=DIGEST)
    assert bob.digest == hashlib.sha256(b"sk-bob").digest() == KeyConfig(key="sha256:" + DIGEST).digest


def test_named_keys_alone_open_a_network_address():
    config = config_from_table({"server": {"host": "0.0.0.0"}, "keys": [{"name": "a", "key": "k"}]})
    assert config.server.api_keys == () and len(config.keys) == 1
    with pytest.raises(ConfigError) as info:
        config_from_table({"server": {"host": "0.0.0.0"}})
    assert info.value.key == "server.host"


@pytest.mark.parametrize("keys,key,reason", [
    ({"name": "a"}, "keys", "array of tables"),
    (["a"], "keys[0]", "must be a table"),
    ([{"key": "k"}], "keys[0].name", "is required"),
    ([{"name": "has space", "key": "k"}], "keys[0].name", "letters, digits"),
    ([{"name": "a", "key": "k"}, {"name": "a", "key": "j"}], "keys.a.name", "duplicate key name"),
    ([{"name": "a", "key": "k"}, {"name": "b", "key": "k"}], "keys.b", "the same key as keys.a"),
    ([{"name": "a", "key": "sk-bob"}, {"name": "b", "key_sha256": DIGEST}], "keys.b", "the same key as"),
    ([{"name": "a"}], "keys.a", "exactly one of key and key_sha256"),
    ([{"name": "a", "key": "k", "key_sha256": DIGEST}], "keys.a", "exactly one of key and key_sha256"),
    ([{"name": "a", "key_sha256": "abc"}], "keys.a.key_sha256", "64 hex digits"),
    ([{"name": "a", "key": "sha256:xyz"}], "keys.a.key", "64 hex digits"),
    ([{"name": "a", "key": "k", "rpm": -1}], "keys.a.rpm", ">= 0"),
    ([{"name": "a", "key": "k", "tpm": "lots"}], "keys.a.tpm", "must be int"),
    ([{"name": "a", "key": "k", "priority": 10}], "keys.a.priority", "<= 9"),
    ([{"name": "a", "key": "k", "models": []}], "keys.a.models", "model names or globs"),
    ([{"name": "a", "key": "k", "models": "llama3*"}], "keys.a.models", "list of strings"),
    ([{"name": "a", "key": "k", "burst": 3}], "keys.a.burst", "unknown key"),
])
def test_bad_key_tables_name_the_key(keys, key, reason):
    with pytest.raises(ConfigError) as info:
        config_from_table({"keys": keys}, "x.toml")
    assert (info.value.key, reason in info.value.reason) == (key, True), str(info.value)
    assert str(info.value).startswith(f"x.toml: {key}: ")
