"""The OpenAI Responses API through velollmd, driven by the official openai SDK
(client.responses.create / .stream / .retrieve / .delete) against the Ollama emulator and the
real llama-server."""
import json
import time

import openai
import pydantic
import pytest

from tests.daemon_process import DaemonProcess
from tests.daemon_rig import RunningDaemon, llama_backend, ollama_backend
from tests.rig.llama import force_tool_call_bias

MODEL = "llama3.2:latest"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}


def client_for(daemon, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def emu_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})


@pytest.fixture
def client(emu_daemon):
    return client_for(emu_daemon)


def sent_messages(emulator) -> list[dict]:
    return [{k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "tool_name")}
            for m in emulator.last_request("/api/chat")["messages"]]


# -- the Ollama emulator -------------------------------------------------------------------

def test_create_retrieve_delete(client, ollama_emulator):
    ollama_emulator.script("Hello there.")
    response = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.",
                                       metadata={"ticket": "42"}, temperature=0.2)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.output_text == "Hello there."
    assert response.model == MODEL and response.metadata == {"ticket": "42"} and response.temperature == 0.2
    [item] = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.content[0].annotations == []
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens > 0
    assert sent_messages(ollama_emulator) == [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}]
    assert ollama_emulator.last_request("/api/chat")["options"]["temperature"] == 0.2

    again = client.responses.retrieve(response.id)
    assert again.output_text == "Hello there." and again.metadata == {"ticket": "42"}
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_previous_response_id_continues_the_conversation(client, ollama_emulator):
    ollama_emulator.script("Nice to meet you, Ada.")
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be kind.")
    ollama_emulator.script("Your name is Ada.")
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == "Your name is Ada."
    assert sent_messages(ollama_emulator) == [                   # instructions are not carried over
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"}]
    ollama_emulator.script("Bye.")
    client.responses.create(model=MODEL, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Thanks!"}]}], previous_response_id=second.id)
    assert [m["content"] for m in sent_messages(ollama_emulator)] == [
        "My name is Ada.", "Nice to meet you, Ada.", "What is my name?", "Your name is Ada.", "Thanks!"]


def test_a_missing_previous_response_is_a_clean_404(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")
    assert error.value.body["code"] == "previous_response_not_found"
    assert error.value.body["param"] == "previous_response_id" and "resp_nope" in error.value.body["message"]


def test_store_false_keeps_nothing(client, ollama_emulator):
    response = client.responses.create(model=MODEL, input="x", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="y", previous_response_id=response.id)


def test_null_fields_mean_their_defaults_and_store_null_stores(client, ollama_emulator):
    """OpenAI's optional fields are nullable, null meaning the default (clients that serialize
    every field send them): store null is store true."""
    ollama_emulator.script("Kept.")
    response = client.responses.create(model=MODEL, input="Keep me", store=None, temperature=None,
                                       top_p=None, parallel_tool_calls=None, previous_response_id=None)
    assert response.store is True and response.parallel_tool_calls is True
    assert response.temperature == 1.0 and response.top_p == 1.0
    assert client.responses.retrieve(response.id).output_text == "Kept."
    ollama_emulator.script("Still here.")
    again = client.responses.create(model=MODEL, input="And?", previous_response_id=response.id)
    assert [m["content"] for m in sent_messages(ollama_emulator)] == ["Keep me", "Kept.", "And?"]
    assert again.output_text == "Still here."


def test_function_call_round_trip_by_id_and_by_items(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    first = client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Oslo"} and call.call_id and call.id.startswith("fc_")
    assert ollama_emulator.last_request("/api/chat")["tools"][0]["function"]["name"] == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    expected = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]

    ollama_emulator.script("It is sunny in Oslo.")
    answer = client.responses.create(model=MODEL, input=[result], previous_response_id=first.id, tools=[WEATHER])
    assert answer.output_text == "It is sunny in Oslo." and sent_messages(ollama_emulator) == expected

    ollama_emulator.script("Still sunny.")                    # stateless: the client sends the items back
    items = [{"role": "user", "content": "Weather in Oslo?"}, *[o.model_dump() for o in first.output], result]
    answer = client.responses.create(model=MODEL, input=items, tools=[WEATHER], store=False)
    assert answer.output_text == "Still sunny." and sent_messages(ollama_emulator) == expected


def test_parallel_tool_calls_false_keeps_one_call(client, ollama_emulator):
    two = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]
    ollama_emulator.script(tool_calls=two)
    response = client.responses.create(model=MODEL, input="Oslo and Rome?", tools=[WEATHER], parallel_tool_calls=False)
    assert [json.loads(o.arguments) for o in response.output] == [{"city": "Oslo"}]
    assert response.parallel_tool_calls is False
    ollama_emulator.script(tool_calls=two)
    with client.responses.stream(model=MODEL, input="Oslo and Rome?", tools=[WEATHER],
                                 parallel_tool_calls=False) as stream:
        final = stream.get_final_response()
    assert [json.loads(o.arguments) for o in final.output] == [{"city": "Oslo"}]


def test_an_image_a_tool_returns_reaches_the_model(client, ollama_emulator):
    """Codex's view_image answers with an input_image in function_call_output; it was dropped."""
    ollama_emulator.script("A cat.")
    png = "data:image/png;base64,aGVsbG8="
    client.responses.create(model=MODEL, input=[
        {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": '{"path": "cat.png"}'},
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_text", "text": "cat.png:"}, {"type": "input_image", "image_url": png}]}])
    tool = ollama_emulator.last_request("/api/chat")["messages"][-1]
    assert (tool["role"], tool["content"], tool["images"]) == ("tool", "cat.png:", ["aGVsbG8="])


def test_reasoning_items_sent_back_reach_the_backend(daemon_factory, ollama_emulator):
    """Codex (store: false) sends the model's reasoning items back with the history; a backend
    that reads reasoning_content (llama-server, vLLM, the engine) gets them on the call's turn."""
    backend = {"name": "compat", "kind": "openai", "url": ollama_emulator.url, "models": ["llama3*"]}
    client = client_for(daemon_factory({"backends": [backend], "cache": {"enabled": False}}))
    ollama_emulator.script("Sunny in Oslo.")
    client.responses.create(model=MODEL, tools=[WEATHER], store=False, input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None,
         "content": [{"type": "reasoning_text", "text": "I should call get_weather."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}])
    [turn] = [m for m in ollama_emulator.last_request("/v1/chat/completions")["messages"] if m["role"] == "assistant"]
    assert turn["reasoning_content"] == "I should call get_weather." and turn["tool_calls"]


def test_the_stream_helper_rebuilds_the_final_response(client, ollama_emulator):
    ollama_emulator.script("One two three.")
    with client.responses.stream(model=MODEL, input="Count.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3 and "".join(deltas) == "One two three." == final.output_text
    assert final.usage.output_tokens > 0 and final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == "One two three."     # stored after the stream


def test_a_streamed_call_comes_out_as_a_function_call_item(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}])
    with client.responses.stream(model=MODEL, input="Rome?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Rome", "unit": "celsius"}
    [call] = [o for o in final.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Rome", "unit": "celsius"}


BROKEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius",},}\n</tool_call>'


def test_a_broken_tool_call_reaches_the_client_repaired(client, ollama_emulator):
    ollama_emulator.script(BROKEN)
    raw = client.responses.with_raw_response.create(model=MODEL, input="Paris?", tools=[WEATHER])
    [call] = raw.parse().output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    assert "trailing-comma" in raw.headers["x-velollm-tool-repair"]
    ollama_emulator.script(BROKEN)
    with client.responses.stream(model=MODEL, input="Paris?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}


def test_text_format_json_schema_reaches_ollama_as_its_format(client, ollama_emulator):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    ollama_emulator.script('{"answer": 4}')
    response = client.responses.create(model=MODEL, input="2+2?", text={"format": {
        "type": "json_schema", "name": "sum", "schema": schema, "strict": True}})
    assert ollama_emulator.last_request("/api/chat")["format"] == schema
    assert json.loads(response.output_text) == {"answer": 4}
    assert response.text.format.type == "json_schema"


def test_a_failure_midway_is_a_response_failed_event(client, ollama_emulator):
    ollama_emulator.script("one two three four", error_after=2)
    events = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.code == "server_error"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two"


def test_codex_style_request_with_ignorable_fields(client, ollama_emulator):
    ollama_emulator.script("Done.")
    response = client.responses.create(
        model=MODEL, store=False, parallel_tool_calls=False, tool_choice="auto",
        instructions="You are a coding agent.", include=["reasoning.encrypted_content"],
        reasoning={"effort": "medium", "summary": "auto"}, prompt_cache_key="abc",
        tools=[WEATHER, {"type": "web_search"}],
        input=[{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "env"}]},
               {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]}])
    assert response.output_text == "Done."
    sent = ollama_emulator.last_request("/api/chat")
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]     # web_search dropped
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]


def test_other_tool_types_are_a_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "code_interpreter", "container": "auto"}])
    assert "code_interpreter" in error.value.body["message"] and error.value.body["param"] == "tools[0].type"


def test_responses_are_scoped_to_their_api_key(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "server": {"api_keys": ["k1", "k2"]}})
    response = client_for(daemon, "k1").responses.create(model=MODEL, input="x")
    assert client_for(daemon, "k1").responses.retrieve(response.id).id == response.id
    with pytest.raises(openai.NotFoundError):
        client_for(daemon, "k2").responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client_for(daemon, "k2").responses.create(model=MODEL, input="y", previous_response_id=response.id)


def test_the_store_bound_evicts_the_oldest(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)],
                             "responses": {"store_max_entries": 2}})
    client = client_for(daemon)
    ids = [client.responses.create(model=MODEL, input=f"n{i}").id for i in range(3)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model=MODEL, input="y", previous_response_id=ids[0])
    assert error.value.body["code"] == "previous_response_not_found"
    assert [client.responses.retrieve(i).id for i in ids[1:]] == ids[1:]


def test_an_item_sent_again_gets_an_id_of_its_own_and_input_items_pages_end(client, ollama_emulator):
    """Ids are unique in a conversation (as at OpenAI): an item sent twice, or sent again with
    previous_response_id, is stored under a fresh id, so paging by `after` reaches the end."""
    again = {"type": "message", "id": "msg_again", "role": "user", "content": "Once more."}
    ollama_emulator.script("One.")
    first = client.responses.create(model=MODEL, input=[again, {"role": "user", "content": "And?"}])
    ollama_emulator.script("Two.")
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input=[again, again])
    assert [m["content"] for m in sent_messages(ollama_emulator)] == [
        "Once more.", "And?", "One.", "Once more.", "Once more."]          # the prompt as sent
    ids, after = [], None
    for _ in range(10):                                # (a loop would page on forever)
        page = client.responses.input_items.list(second.id, order="asc", limit=1,
                                                 **({"after": after} if after else {}))
        ids += [item.id for item in page.data]
        if not page.has_more:
            break
        after = page.last_id
    assert len(ids) == 5 and len(set(ids)) == 5 and ids[0] == "msg_again"
    assert [item.content[0].text for item in client.responses.input_items.list(second.id, order="asc")] == [
        "Once more.", "And?", "One.", "Once more.", "Once more."]


# -- the store across restarts -------------------------------------------------------------

def test_a_restart_keeps_stored_responses_their_owners_and_deletes(tmp_path, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
             "server": {"api_keys": ["k1", "k2"]}, "responses": {"path": str(tmp_path / "responses")}}
    with RunningDaemon(table) as daemon:
        ollama_emulator.script("Nice to meet you, Ada.")
        first = client_for(daemon, "k1").responses.create(model=MODEL, input="My name is Ada.")
        gone = client_for(daemon, "k1").responses.create(model=MODEL, input="Forget this.")
        client_for(daemon, "k1").responses.delete(gone.id)
    with RunningDaemon(table) as daemon:                     # a restart (a graceful one)
        client = client_for(daemon, "k1")
        ollama_emulator.script("Your name is Ada.")
        second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
        assert [m["content"] for m in sent_messages(ollama_emulator)] == [
            "My name is Ada.", "Nice to meet you, Ada.", "What is my name?"]
        assert client.responses.retrieve(first.id).output_text == "Nice to meet you, Ada."
        assert [item.id for item in client.responses.input_items.list(second.id)][-1] == \
            client.responses.input_items.list(first.id).data[0].id
        for missing, key in ((gone.id, "k1"), (first.id, "k2")):
            with pytest.raises(openai.NotFoundError):
                client_for(daemon, key).responses.retrieve(missing)


def wait_until_written(path, text: str) -> None:
    while not (path.exists() and text.encode() in path.read_bytes()):
        time.sleep(0.02)


def test_a_crash_loses_only_what_changed_since_the_last_periodic_write(tmp_path, ollama_emulator):
    store_dir = tmp_path / "responses"
    backend = ollama_backend(ollama_emulator)
    toml = (f'[cache]\nenabled = false\n[responses]\npath = "{store_dir}"\nsnapshot_interval_s = 0.05\n'
            f'[[backends]]\nname = "ollama"\nkind = "ollama"\nurl = "{backend["url"]}"\nmodels = ["llama3*"]\n')
    with DaemonProcess(toml, tmp_path) as daemon:
        ollama_emulator.script("Noted: blue.")
        first = client_for(daemon).responses.create(model=MODEL, input="My colour is blue.")
        wait_until_written(store_dir / "responses.snap", first.id)    # the next periodic write
        daemon.kill()                                       # kill -9: no shutdown write
        daemon.start()
        ollama_emulator.script("Blue.")
        second = client_for(daemon).responses.create(model=MODEL, input="My colour?", previous_response_id=first.id)
        assert second.output_text == "Blue." and "My colour is blue." in str(sent_messages(ollama_emulator))


def store_toml(emulator, store_dir) -> str:
    """A daemon whose store is written only on shutdown (an interval no test waits for)."""
    backend = ollama_backend(emulator)
    return (f'[cache]\nenabled = false\n[responses]\npath = "{store_dir}"\nsnapshot_interval_s = 3600\n'
            f'[[backends]]\nname = "ollama"\nkind = "ollama"\nurl = "{backend["url"]}"\nmodels = ["llama3*"]\n')


def test_a_deleted_response_stays_deleted_after_a_crash(tmp_path, ollama_emulator):
    """DELETE /v1/responses/{id} reaches the disk before it answers, not at the next periodic
    write: kill -9 right after it does not bring the response back; and the previous file,
    kept to fall back on, no longer holds it either."""
    with DaemonProcess(store_toml(ollama_emulator, tmp_path / "responses"), tmp_path) as daemon:
        kept = client_for(daemon).responses.create(model=MODEL, input="Keep this.")
        gone = client_for(daemon).responses.create(model=MODEL, input="Forget this.")
        assert daemon.stop() == 0                           # both on disk (the shutdown write)
        daemon.start()
        client_for(daemon).responses.delete(gone.id)                 # (a 404 would raise)
        daemon.kill()                                       # kill -9: no shutdown write
        for snapshot in (tmp_path / "responses").iterdir():   # nor the fallback copy keeps it
            assert gone.id.encode() not in snapshot.read_bytes(), snapshot.name
        daemon.start()
        with pytest.raises(openai.NotFoundError):
            client_for(daemon).responses.retrieve(gone.id)
        assert client_for(daemon).responses.retrieve(kept.id).id == kept.id


def test_a_reload_that_turns_the_store_on_merges_the_snapshot_already_there(tmp_path, ollama_emulator):
    """[responses] path set by a reload where an earlier run left its store: what is on disk is
    loaded beside what is in memory (not overwritten by it), and the whole written there."""
    store_dir = tmp_path / "responses"
    with DaemonProcess(store_toml(ollama_emulator, store_dir), tmp_path) as daemon:
        earlier = client_for(daemon).responses.create(model=MODEL, input="From the earlier run.")
        assert daemon.stop() == 0
        daemon.config.write_text(daemon.config.read_text().replace(f'path = "{store_dir}"', 'path = ""'))
        daemon.start()
        ollama_emulator.script("In memory.")
        now = client_for(daemon).responses.create(model=MODEL, input="From this run.")
        daemon.config.write_text(daemon.config.read_text().replace('path = ""', f'path = "{store_dir}"'))
        daemon.reload()
        client = client_for(daemon)
        assert client.responses.retrieve(earlier.id).id == earlier.id
        assert client.responses.retrieve(now.id).output_text == "In memory."
        assert daemon.stop() == 0
        daemon.start()
        assert {client_for(daemon).responses.retrieve(r.id).id for r in (earlier, now)} == {earlier.id, now.id}


def test_a_response_deleted_while_the_store_was_off_stays_deleted_when_it_is_on_again(tmp_path, ollama_emulator):
    """[responses] path turned off by a reload, a response deleted, the path turned on again:
    the snapshot there still holds the response, but the merge does not bring it back, and
    the next start does not either."""
    store_dir = tmp_path / "responses"

    def table(path: str) -> dict:
        return {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
                "responses": {"path": path, "snapshot_interval_s": 0.05}}
    with RunningDaemon(table(str(store_dir))) as daemon:
        client = client_for(daemon)
        kept = client.responses.create(model=MODEL, input="Keep this.")
        gone = client.responses.create(model=MODEL, input="Forget this.")
        wait_until_written(store_dir / "responses.snap", gone.id)
        daemon.reload(table(""))
        client.responses.delete(gone.id)
        assert gone.id.encode() in (store_dir / "responses.snap").read_bytes()    # not owned: not written
        daemon.reload(table(str(store_dir)))
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(gone.id)
        assert client.responses.retrieve(kept.id).id == kept.id
    with RunningDaemon(table(str(store_dir))) as daemon:
        with pytest.raises(openai.NotFoundError):
            client_for(daemon).responses.retrieve(gone.id)
        assert client_for(daemon).responses.retrieve(kept.id).id == kept.id


def test_a_reload_that_turns_the_store_off_writes_it_there_one_last_time(tmp_path, ollama_emulator):
    """[responses] path turned off by a reload before any periodic write: the directory given
    up gets the store as it was then, so a later start on that path still has the response."""
    store_dir = tmp_path / "responses"
    on, off = f'path = "{store_dir}"', 'path = ""'
    with DaemonProcess(store_toml(ollama_emulator, store_dir), tmp_path) as daemon:
        ollama_emulator.script("Written on the way out.")
        kept = client_for(daemon).responses.create(model=MODEL, input="Keep this.")
        daemon.config.write_text(daemon.config.read_text().replace(on, off))
        daemon.reload()
        assert daemon.stop() == 0
        daemon.config.write_text(daemon.config.read_text().replace(off, on))
        daemon.start()
        assert client_for(daemon).responses.retrieve(kept.id).output_text == "Written on the way out."


def test_a_corrupt_store_file_is_set_aside_and_the_daemon_serves(tmp_path, ollama_emulator):
    store_dir = tmp_path / "responses"
    store_dir.mkdir()
    (store_dir / "responses.snap").write_bytes(b"not a store at all")
    table = {"backends": [ollama_backend(ollama_emulator)], "responses": {"path": str(store_dir)}}
    with RunningDaemon(table) as daemon:
        client = client_for(daemon)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="y", previous_response_id="resp_unknown")
        kept = client.responses.create(model=MODEL, input="x")
    assert [p for p in store_dir.iterdir() if ".corrupt-" in p.name]
    with RunningDaemon(table) as daemon:
        assert client_for(daemon).responses.retrieve(kept.id).id == kept.id


# -- the real llama-server -----------------------------------------------------------------

@pytest.fixture
def llama_client(daemon_factory, llama_server):
    return client_for(daemon_factory({"backends": [llama_backend(llama_server)]}))


def test_llama_max_output_tokens_makes_an_incomplete_response(llama_client):
    response = llama_client.responses.create(model="tiny", input="Say something.", max_output_tokens=8,
                                             temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 8 and response.output_text
    assert response.output[0].status == "incomplete" and response.max_output_tokens == 8


def test_llama_stream_events_follow_openai(llama_client):
    events = list(llama_client.responses.create(model="tiny", input="Say something.", max_output_tokens=6,
                                                stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 6 and len({(e.item_id, e.output_index, e.content_index) for e in deltas}) == 1
    final = events[-1]
    assert final.type == "response.incomplete" and final.response.usage.output_tokens == 6
    assert final.response.output[0].content[0].text == "".join(e.delta for e in deltas)
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == final.response.output[0].content[0].text


def test_llama_forced_tool_call_round_trip_with_the_stream_helper(llama_client):
    args = dict(model="tiny", tools=[WEATHER], max_output_tokens=100,
                extra_body={"logit_bias": force_tool_call_bias()})     # the tiny model's one real call
    with llama_client.responses.stream(input="Weather?", **args) as stream:
        final = stream.get_final_response()
    [call] = [o for o in final.output if o.type == "function_call"]
    assert final.status == "completed" and call.name == "get_weather"
    assert json.loads(call.arguments)["unit"] in ("celsius", "fahrenheit")
    follow = llama_client.responses.create(                  # the call and its result reach the prompt
        model="tiny", previous_response_id=final.id, max_output_tokens=5, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.output_text and follow.usage.input_tokens > final.usage.input_tokens


def test_a_repeated_request_is_an_exact_cache_hit_whole_and_streamed(daemon_factory, ollama_emulator):
    client = client_for(daemon_factory({"backends": [ollama_backend(ollama_emulator)]}))
    ollama_emulator.script("Cached words here.")
    args = dict(model=MODEL, input="Repeat me.", temperature=0)
    first = client.responses.with_raw_response.create(**args)
    again = client.responses.with_raw_response.create(**args)
    assert (first.headers["x-velollm-cache"], again.headers["x-velollm-cache"]) == ("miss", "hit-exact")
    assert again.parse().output_text == first.parse().output_text == "Cached words here."
    assert again.parse().id != first.parse().id and ollama_emulator.count("/api/chat") == 1
    with client.responses.stream(**args) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Cached words here." and ollama_emulator.count("/api/chat") == 1
    assert client.responses.retrieve(final.id).output_text == "Cached words here."


def test_llama_text_format_json_schema_is_enforced_by_llama_server(llama_client):
    class Verdict(pydantic.BaseModel):
        ok: bool

    parsed = llama_client.responses.parse(model="tiny", input="Answer.", text_format=Verdict, max_output_tokens=40)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Verdict)
    free = llama_client.responses.create(model="tiny", input="Answer.", max_output_tokens=40)
    with pytest.raises(ValueError):                           # without the schema: the tiny model's noise
        json.loads(free.output_text)


def test_a_model_alias_serves_responses_under_the_clients_name(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "aliases": {"gpt-5-codex": MODEL}})
    ollama_emulator.script("Aliased.")
    response = client_for(daemon).responses.create(model="gpt-5-codex", input="x")
    assert response.model == "gpt-5-codex" and response.output_text == "Aliased."
    assert ollama_emulator.last_request("/api/chat")["model"] == MODEL


def test_llama_input_tokens_are_counted_exactly(llama_client):
    args = dict(model="tiny", input="Say something.", instructions="Be terse.", tools=[WEATHER])
    raw = llama_client.responses.input_tokens.with_raw_response.count(**args)
    counted = raw.parse()
    assert raw.headers["x-velollm-token-count"] == "exact" and counted.object == "response.input_tokens"
    served = llama_client.responses.create(max_output_tokens=3, **args)
    assert counted.input_tokens == served.usage.input_tokens
    follow = llama_client.responses.input_tokens.count(model="tiny", input="More.", previous_response_id=served.id)
    assert follow.input_tokens > llama_client.responses.input_tokens.count(model="tiny", input="More.").input_tokens
    history = llama_client.responses.input_tokens.count(model="tiny", previous_response_id=served.id)
    assert 0 < history.input_tokens < follow.input_tokens


def test_llama_input_tokens_count_a_history_call_with_arguments_that_are_no_json(llama_client):
    """Counted as generating sends it (llama-server's /apply-template refused the history: an
    estimate, not the exact count)."""
    items = [{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "city=Oslo"},
             {"type": "function_call_output", "call_id": "c1", "output": "bad arguments"}]
    raw = llama_client.responses.input_tokens.with_raw_response.count(model="tiny", input=items, tools=[WEATHER])
    assert raw.headers["x-velollm-token-count"] == "exact" and raw.parse().input_tokens > 0


def test_input_tokens_estimated_where_the_backend_cannot_count(client):
    raw = client.responses.input_tokens.with_raw_response.count(model=MODEL, input="Hello there, how are you?")
    assert raw.headers["x-velollm-token-count"] == "estimate" and raw.parse().input_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model=MODEL, input="x", previous_response_id="resp_nope")
    with pytest.raises(openai.BadRequestError):
        client.responses.input_tokens.count(input="x")
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.input_tokens.count(model=MODEL)
    assert error.value.body["param"] == "input"


def test_only_background_responses_can_be_cancelled(client, ollama_emulator):
    response = client.responses.create(model=MODEL, input="x")
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.cancel(response.id)
    assert "background" in error.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")
