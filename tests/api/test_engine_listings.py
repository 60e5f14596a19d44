"""The engine's listings are current: a GGUF copied into models_dir or removed, an `ollama pull`
of a new tag or an `ollama rm`, shows in /v1/models, /api/tags, /api/show and /api/ps at once,
not at the next health check (an hour away here), and so does /health. The official clients
drive the real daemon."""
from __future__ import annotations

import json
import urllib.request

import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.engine.test_store import rewrite_in_place, write_ollama_model
from tests.rig.llama import make_tiny_model
from velollmd.api import admin
from velollmd.api.dashboard import FEED_PATH
from velollmd.backends.base import HEALTH_TIMEOUT_S

LIBRARY = ("registry.ollama.ai", "library")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An empty models_dir and an Ollama store (Ollama's other default places left empty)."""
    folder, store = tmp_path / "models", tmp_path / "ollama-models"
    folder.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return folder, store


def daemon(folder, **extra) -> RunningDaemon:
    backend = {**engine_backend(folder), "ollama_store": True, "health_interval_s": 3600, **extra}
    return RunningDaemon({"backends": [backend], "cache": {"enabled": False}})


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_a_gguf_added_then_removed_is_listed_then_gone_at_once(folders):
    folder, _ = folders
    with daemon(folder) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        local = ollama.Client(host=running.url)
        empty = [m.id for m in client.models.list().data]
        make_tiny_model(folder / "added.gguf")
        listed = ([m.id for m in client.models.list().data], [m.model for m in local.list().models],
                  client.models.retrieve("added").id, local.show("added").details.format)
        local.generate(model="added", prompt="the sun", options={"num_predict": 2})
        running_before = [m.model for m in local.ps().models]
        (folder / "added.gguf").unlink()
        gone = ([m.id for m in client.models.list().data], [m.model for m in local.list().models],
                [m.model for m in local.ps().models])
        with pytest.raises(ollama.ResponseError) as shown:
            local.show("added")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="added", messages=[{"role": "user", "content": "hi"}])
    assert empty == []
    assert listed == (["added"], ["added"], "added", "gguf")
    assert running_before == ["added"]
    assert gone == ([], [], [])          # the idle model whose file is gone is unloaded, as `ollama rm` does
    assert shown.value.status_code == 404


def test_ollama_pull_of_a_new_tag_and_ollama_rm_show_at_once(folders, tmp_path):
    folder, store = folders
    blob = make_tiny_model(tmp_path / "blob.gguf").read_bytes()
    write_ollama_model(store, (*LIBRARY, "tinyllama", "latest"), blob)
    with daemon(folder) as running:
        local = ollama.Client(host=running.url)

        def names():
            return sorted(m.model for m in local.list().models)
        before = names()
        write_ollama_model(store, (*LIBRARY, "tinyllama", "1b"), blob)
        pulled = names(), local.show("tinyllama:1b").details.family
        (store / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "1b").unlink()
        removed = names()
        with pytest.raises(ollama.ResponseError) as shown:
            local.show("tinyllama:1b")
    assert before == ["tinyllama:latest"]
    assert pulled == (["tinyllama:1b", "tinyllama:latest"], "llama")
    assert removed == ["tinyllama:latest"] and shown.value.status_code == 404


def test_a_corrupt_manifest_is_unavailable_with_its_reason_and_the_listing_goes_on(folders, tmp_path):
    folder, store = folders
    write_ollama_model(store, (*LIBRARY, "tinyllama", "latest"), make_tiny_model(tmp_path / "blob.gguf").read_bytes())
    with daemon(folder) as running:
        local = ollama.Client(host=running.url)
        before = [m.model for m in local.list().models]
        broken = store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
        broken.parent.mkdir(parents=True)
        broken.write_text("{not json")
        after = [m.model for m in local.list().models]
        unavailable = get_json(running.url + "/health")["backends"][0]["engine"]["unavailable"]
        with pytest.raises(ollama.ResponseError) as asked:
            local.generate(model="broken", prompt="hi")
    assert before == after == ["tinyllama:latest"]
    assert "unreadable Ollama manifest" in unavailable["broken:latest"] and str(broken) in unavailable["broken:latest"]
    assert asked.value.status_code == 503 and "unreadable Ollama manifest" in asked.value.error


def test_ps_shows_the_tagged_name_with_the_num_ctx_asked_under_the_bare_one(folders, tmp_path):
    """`ollama run tinyllama` with num_ctx 384: /api/ps lists tinyllama:latest, as Ollama does,
    with the context it was loaded with (not the configured 512)."""
    folder, store = folders
    write_ollama_model(store, (*LIBRARY, "tinyllama", "latest"), make_tiny_model(tmp_path / "blob.gguf").read_bytes())
    with daemon(folder) as running:
        local = ollama.Client(host=running.url)
        local.generate(model="tinyllama", prompt="the sun", options={"num_predict": 2, "num_ctx": 384})
        entries = [(m.name, m.model, m.context_length) for m in local.ps().models]
        tags = [m.model for m in local.list().models]
    assert entries == [("tinyllama:latest", "tinyllama:latest", 384)] and tags == ["tinyllama:latest"]


def test_show_and_retrieve_of_an_unavailable_model_answer_503_with_the_reason_as_chat_does(folders, tmp_path):
    """A corrupt GGUF in models_dir and a corrupt Ollama manifest: /api/show and GET
    /v1/models/{id} answer 503 model_unavailable with the reason, as a chat for them does,
    not 404 "does not exist" (the model is there; it cannot be served)."""
    folder, store = folders
    (folder / "garbage.gguf").write_bytes(b"not a gguf file at all" * 10)
    broken = store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    with daemon(folder) as running:
        local = ollama.Client(host=running.url)
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        shown, retrieved, chatted = {}, {}, {}
        for name in ("garbage", "broken"):
            with pytest.raises(ollama.ResponseError) as shown[name]:
                local.show(name)
            with pytest.raises(openai.APIStatusError) as retrieved[name]:
                client.models.retrieve(name)
            with pytest.raises(openai.APIStatusError) as chatted[name]:
                client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        listed = [m.id for m in client.models.list().data]
    assert listed == []
    for name, reason in (("garbage", str(folder / "garbage.gguf")), ("broken", "unreadable Ollama manifest")):
        assert shown[name].value.status_code == 503 and reason in shown[name].value.error
        for answer in (retrieved[name].value, chatted[name].value):
            assert answer.status_code == 503 and answer.body["code"] == "model_unavailable"
            assert reason in answer.body["message"]
        assert retrieved[name].value.body["message"] == chatted[name].value.body["message"]


def test_ps_keeps_a_model_whose_file_is_removed_while_it_runs_until_its_request_ends(folders):
    """`rm` of a GGUF while a long generation on it streams: the model leaves /api/tags at once
    but is still loaded and running, so /api/ps lists it until the request ends (as Ollama's
    ps lists a model until it is unloaded), then no more, with the details it had (its own
    probe, kept while loaded: the catalogue's table forgets a file no longer listed)."""
    folder, _ = folders
    make_tiny_model(folder / "busy.gguf")
    with daemon(folder, num_ctx=4096) as running:      # ~4000 tokens to go: seconds of work
        local = ollama.Client(host=running.url)
        stream = local.generate(model="busy", prompt="the sun", stream=True, options={"num_predict": 4000})
        next(stream)
        listed = [(m.model, m.details.family, m.details.quantization_level, m.context_length, m.size)
                  for m in local.ps().models]
        (folder / "busy.gguf").unlink()
        during = [(m.model, m.details.family, m.details.quantization_level, m.context_length, m.size)
                  for m in local.ps().models]
        probed = dict(running.app.registry.backends[0]._probed)
        still_running = get_json(running.url + "/health")["backends"][0]["engine"]["loaded"]["busy"]["requests"]
        tags = [m.model for m in local.list().models]
        last = list(stream)[-1]
        after = [m.model for m in local.ps().models]
    assert still_running == 1            # asked after /api/ps: the request ran all the while
    assert during == listed and listed[0][:2] == ("busy", "llama") and listed[0][2] and listed[0][4] > 0
    assert tags == []
    assert probed == {}                  # the catalogue's probes are of the files listed; the model keeps its own
    assert last.done and last.eval_count == 4000 and after == []


def seen_through_a_files_life(folder, look):
    """What look() sees before a GGUF is copied into folder, once it is, once it is rewritten in
    place into a corrupt one (same size, mtime set back), and once it is removed; and its path."""
    seen = [look()]
    path = make_tiny_model(folder / "added.gguf")
    seen.append(look())
    rewrite_in_place(path, b"XXXX" + path.read_bytes()[4:])
    seen.append(look())
    path.unlink()
    seen.append(look())
    return path, seen


def test_health_shows_a_gguf_added_corrupted_in_place_and_removed_at_once(folders):
    """Only /health asked, no listing in between: it checks the files as a listing does, so
    a GGUF copied in, then rewritten in place into a corrupt one (same size, mtime set back),
    then removed, shows there at once, not at the next health check an hour away."""
    folder, _ = folders
    with daemon(folder) as running:
        def engine_row():
            row = get_json(running.url + "/health")["backends"][0]
            return row["models"], row["engine"]["unavailable"]
        path, (empty, added, corrupted, removed) = seen_through_a_files_life(folder, engine_row)
    assert empty == removed == ([], {})
    assert added == (["added"], {})
    assert corrupted[0] == [] and str(path) in corrupted[1]["added"]


def test_the_dashboard_feed_shows_the_engine_catalogue_as_health_does_at_once(folders, monkeypatch):
    """The dashboard's feed shows /health's backend rows, freshened the same way (the same
    stat check, the same short deadline): a GGUF copied in, corrupted in place, then removed
    shows in the feed at once, polled alone, not at the next health check an hour away."""
    folder, _ = folders
    with daemon(folder) as running:
        registry = running.app.registry
        deadlines = []
        freshen = registry.freshen

        async def freshen_seen(timeout_s=HEALTH_TIMEOUT_S):
            deadlines.append(timeout_s)
            await freshen(timeout_s)
        monkeypatch.setattr(registry, "freshen", freshen_seen)

        def rows():
            feed = get_json(running.url + FEED_PATH)["backends"][0]
            health = get_json(running.url + "/health")["backends"][0]
            return [(row["models"], row["engine"]["unavailable"]) for row in (feed, health)]
        path, (empty, added, corrupted, removed) = seen_through_a_files_life(folder, rows)
    assert empty == removed == [([], {})] * 2
    assert added == [(["added"], {})] * 2
    assert corrupted[0] == corrupted[1] and corrupted[0][0] == [] and str(path) in corrupted[0][1]["added"]
    assert deadlines == [admin.HEALTH_FRESHEN_S] * 8          # the feed's and /health's four polls each
