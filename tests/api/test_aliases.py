"""Model aliases: a client's vendor model name served by a local model, on every API, with the
client's name echoed back; listed in /v1/models; refused in the config when they would chain."""

import ollama
import openai
import pytest

from tests.daemon_rig import llama_backend, ollama_backend
from velollmd.backends.aliases import ModelAliases
from velollmd.config import config_from_table
from velollmd.errors import ConfigError

MESSAGES = [{"role": "user", "content": "Say something."}]


def test_exact_alias_wins_glob_applies_only_to_unlisted_names():
    aliases = ModelAliases([("gpt-4o", "tiny"), ("claude-*", "qwen"), ("q*", "tiny")])
    listed = {"tiny", "qwen"}.__contains__
    assert aliases.resolve("gpt-4o", listed) == "tiny"
    assert aliases.resolve("claude-sonnet-4-5", listed) == "qwen"
    assert aliases.resolve("qwen", listed) == "qwen"            # a served model is never hidden by a glob
    assert aliases.resolve("quux", listed) == "tiny"
    assert aliases.resolve("other", listed) == "other"
    assert aliases.aliases_of("tiny") == ["gpt-4o"]


@pytest.mark.parametrize("table, key, message", [
    ({"gpt-4o": ""}, "aliases.gpt-4o", "non-empty"),
    ({"gpt-4o": 4}, "aliases.gpt-4o", "non-empty"),
    ({"gpt-4o": "qwen*"}, "aliases.gpt-4o", "not a glob"),
    ({"a": "b", "b": "c"}, "aliases.a", "do not chain"),
    ({"claude-*": "claude-local"}, "aliases.claude-*", "do not chain"),
    ({" ": "tiny"}, "aliases. ", "must not be empty"),
])
def test_bad_aliases_are_config_errors(table, key, message):
    with pytest.raises(ConfigError) as info:
        config_from_table({"aliases": table})
    assert info.value.key == key and message in str(info.value)


def test_aliases_must_be_a_table():
    with pytest.raises(ConfigError, match="must be a table"):
        config_from_table({"aliases": ["gpt-4o"]})


@pytest.fixture
def daemon(daemon_factory, llama_server, ollama_emulator):
    return daemon_factory({"backends": [llama_backend(llama_server), ollama_backend(ollama_emulator)],
                           "aliases": {"gpt-4o": "tiny", "claude-*": "tiny", "my-llama": "llama3.2",
                                       "text-embedding-3-small": "nomic-embed-text"}})


@pytest.fixture
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)


def test_alias_serves_the_target_and_echoes_the_clients_name(client):
    aliased = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=6, temperature=0)
    direct = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0)
    assert aliased.model == "gpt-4o" and direct.model == "tiny"
    assert aliased.choices[0].message.content == direct.choices[0].message.content
    chunks = list(client.chat.completions.create(model="claude-sonnet-4-5", messages=MESSAGES, max_tokens=6,
                                                 temperature=0, stream=True))
    assert chunks and all(c.model == "claude-sonnet-4-5" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        direct.choices[0].message.content


def test_cache_hit_through_an_alias_keeps_the_clients_name(client):
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "alias cache"}], max_tokens=5, temperature=0)
    again = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "alias cache"}], max_tokens=5, temperature=0)
    assert again.headers["x-velollm-cache"].startswith("hit")
    assert first.parse().model == again.parse().model == "gpt-4o"


def test_exact_aliases_are_listed_and_retrievable(client):
    ids = [m.id for m in client.models.list()]
    assert {"tiny", "gpt-4o", "my-llama"} <= set(ids)
    assert not any("*" in i for i in ids)
    assert client.models.retrieve("gpt-4o").owned_by == "llama"
    assert client.models.retrieve("claude-opus-4").id == "claude-opus-4"     # a glob alias resolves too


def test_unknown_name_is_still_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-3.5", messages=MESSAGES, max_tokens=2)


def test_ollama_api_through_aliases(daemon):
    client = ollama.Client(host=daemon.url)
    reply = client.chat(model="my-llama", messages=MESSAGES, options={"num_predict": 4})  # native passthrough
    assert reply.message.content
    translated = client.chat(model="gpt-4o", messages=MESSAGES, options={"num_predict": 4, "temperature": 0})
    assert translated.model == "gpt-4o" and translated.message.content
    names = [m.model for m in client.list().models]
    assert "gpt-4o" in names and "my-llama" in names
    assert client.show("gpt-4o").modelfile


def test_embeddings_through_an_alias(client):
    answer = client.embeddings.create(model="text-embedding-3-small", input="hello")
    direct = client.embeddings.create(model="nomic-embed-text", input="hello")
    assert answer.model == "text-embedding-3-small" and direct.model == "nomic-embed-text"
    assert answer.data[0].embedding == direct.data[0].embedding and len(direct.data[0].embedding) > 0
