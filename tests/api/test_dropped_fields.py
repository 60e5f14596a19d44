"""Chat's `web_search_options` (OpenAI's hosted search, which no server here runs) is validated
and dropped, and the answer says so in `x-velollm-dropped`, as the Responses API names its
dropped tools in `x-velollm-dropped-tools`: non-stream and stream, from the backend, from the
cache and from the replay memo. The official openai SDK against the Ollama emulator."""
import openai
import pytest

from tests.daemon_rig import ollama_backend

MODEL = "llama3.2:latest"
SEARCH = {"search_context_size": "low"}


@pytest.fixture
def client(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})       # the cache on
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def ask(text: str, **extra) -> dict:
    return {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": text}], **extra}


def seen(raw) -> tuple[str, str | None]:
    return raw.headers["x-velollm-cache"], raw.headers.get("x-velollm-dropped")


def test_web_search_options_dropped_is_named_on_every_answer(client, ollama_emulator):
    ollama_emulator.script("Paris.")
    create = client.chat.completions.with_raw_response.create
    # the same bytes thrice: a miss, then exact hits (replayed from the raw bytes: the memo)
    whole = [seen(create(**ask("Capital of France?", web_search_options=SEARCH))) for _ in range(3)]
    with client.chat.completions.with_streaming_response.create(
            **ask("Capital of France?", web_search_options=SEARCH), stream=True) as hit:
        streamed_hit = seen(hit), "Paris." in hit.read().decode()
    ollama_emulator.script("Rome.")
    with client.chat.completions.with_streaming_response.create(
            **ask("Capital of Italy?", web_search_options=SEARCH), stream=True) as miss:
        streamed_miss = seen(miss), "Rome." in miss.read().decode()
    plain = [seen(create(**ask("Capital of France?"))) for _ in range(2)]     # the same cache entry
    assert whole == [("miss", "web_search_options"), ("hit-exact", "web_search_options"),
                     ("hit-exact", "web_search_options")]
    assert streamed_hit == (("hit-exact", "web_search_options"), True)
    assert streamed_miss == (("miss", "web_search_options"), True)
    assert plain == [("hit-exact", None), ("hit-exact", None)]
    assert "web_search_options" not in ollama_emulator.last_request("/api/chat")
    assert ollama_emulator.count("/api/chat") == 2


def test_null_web_search_options_is_not_named(client, ollama_emulator):
    ollama_emulator.script("Paris.")
    raw = client.chat.completions.with_raw_response.create(**ask("Capital?", extra_body={"web_search_options": None}))
    assert seen(raw) == ("miss", None)
