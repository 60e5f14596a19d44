"""POST /v1/rerank (and /rerank, /v2/rerank, /reranking, /v1/reranking), and vLLM's /score over
it, through the daemon:
against a real llama-server started with --reranking on the tiny Qwen3-style reranker GGUF
(tools/make_tiny_gguf.py --arch qwen3 --reranker), a real llama-server without it (501), the
engine on the same file (llama-server's scores within 1e-4, its order and token counts), the
engine on a model that is no reranker (501 saying why), and a scripted vLLM (its /v1/rerank answer passed on; a server without one: 501).
No official client reranks (openai's has no rerank): plain HTTP, as RAG apps send it."""
from __future__ import annotations

import json

import shutil

import httpx
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend
from tests.rig.llama import LlamaServer, make_tiny_model, tiny_gguf_tool
from tests.rig.scripted_openai import ScriptedServer
from velollmd.api.rerank import RERANK_PATHS, SCORE_PATHS

QUERY = "what is the capital of france"
DOCUMENTS = ["paris is the capital of france", "the cat sat on the mat", "hello world", "a big red apple"]
VLLM_ANSWER = {"id": "rerank-1", "model": "m", "usage": {"total_tokens": 21},
               "results": [{"index": 1, "document": {"text": "b"}, "relevance_score": 0.9},
                           {"index": 0, "document": {"text": "a"}, "relevance_score": 0.2}]}


@pytest.fixture(scope="module")
def reranker(tmp_path_factory, llama_binary):
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path_factory.mktemp("rerank") / "rerank.gguf", arch="qwen3",
                                            dtype="f32", reranker=True)
    with LlamaServer(path, binary=llama_binary, alias="tiny-rerank", parallel=2,
                     extra_args=["--reranking"]) as server:
        yield server


@pytest.fixture(scope="module")
def templated(tmp_path_factory, llama_binary):
    """The same reranker with Qwen3-Reranker's tokenizer.chat_template.rerank, as the converter writes it."""
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path_factory.mktemp("rerank-t") / "rerank-t.gguf", arch="qwen3",
                                            dtype="f32", reranker="template")
    with LlamaServer(path, binary=llama_binary, alias="tiny-rerank-t", parallel=2,
                     extra_args=["--reranking"]) as server:
        yield server


@pytest.fixture(scope="module")
def scripted():
    """A vLLM serving a reranker ("m"), and an OpenAI-compatible server without /v1/rerank ("plain")."""
    vllm = ScriptedServer({"POST /v1/rerank": (200, json.dumps(VLLM_ANSWER).encode())})
    plain = ScriptedServer({})
    yield vllm, plain
    vllm.close()
    plain.close()


@pytest.fixture(scope="module")
def daemon(reranker, templated, llama_server, scripted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerank-engine")
    make_tiny_model(folder / "eng-tiny.gguf")
    shutil.copy(reranker.model_path, folder / "eng-rerank.gguf")         # the files llama-server reranks with
    shutil.copy(templated.model_path, folder / "eng-rerank-t.gguf")
    vllm, plain = scripted
    backends = [llama_backend(reranker, name="llama-rerank", models=["tiny-rerank"]),
                llama_backend(llama_server, name="llama-chat", models=["tiny"]),
                engine_backend(folder, models=["eng-*"]),
                {"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]},
                {"name": "plain", "kind": "openai", "url": plain.url, "models": ["plain"]}]
    with RunningDaemon({"backends": backends, "cache": {"enabled": False}}) as running:
        yield running


def rerank(daemon, path: str = "/v1/rerank", **fields) -> httpx.Response:
    body = {"model": "tiny-rerank", "query": QUERY, "documents": DOCUMENTS, **fields}
    return httpx.post(daemon.url + path, json=body, timeout=60)


@pytest.mark.parametrize("path", RERANK_PATHS)
def test_llama_server_scores_every_document_best_first(daemon, reranker, path):
    answer = rerank(daemon, path).json()
    direct = httpx.post(reranker.url + "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60).json()
    scores = [r["relevance_score"] for r in answer["results"]]
    assert sorted(r["index"] for r in answer["results"]) == list(range(len(DOCUMENTS)))
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert len(set(scores)) > 1                          # the head tells the documents apart
    assert answer["results"] == direct["results"]        # llama-server's own scores, as it ranked them
    assert answer["model"] == "tiny-rerank" and answer["usage"]["prompt_tokens"] > 0


def test_top_n_keeps_the_best(daemon):
    full = rerank(daemon).json()["results"]
    assert rerank(daemon, top_n=2).json()["results"] == full[:2]


def test_return_documents_gives_each_results_text(daemon):
    results = rerank(daemon, return_documents=True).json()["results"]
    assert [r["document"] for r in results] == [{"text": DOCUMENTS[r["index"]]} for r in results]
    assert all("document" not in r for r in rerank(daemon, return_documents=False).json()["results"])


def test_documents_as_objects_with_text_rank_as_strings(daemon):
    as_objects = rerank(daemon, documents=[{"text": d} for d in DOCUMENTS]).json()["results"]
    assert as_objects == rerank(daemon).json()["results"]


@pytest.mark.parametrize("fields, param", [
    ({"query": None}, "query"), ({"query": 3}, "query"),
    ({"documents": []}, "documents"), ({"documents": "paris"}, "documents"), ({"documents": ["a", 1]}, "documents"),
    ({"documents": [{"text": 1}]}, "documents"),
    ({"top_n": 0}, "top_n"), ({"top_n": "2"}, "top_n"), ({"top_n": True}, "top_n"), ({"top_n": 1.5}, "top_n"),
    ({"return_documents": "yes"}, "return_documents"), ({"return_documents": 1}, "return_documents"),
    ({"model": 7}, "model"), ({"model": ""}, "model"),
])
def test_bad_fields_are_a_400_naming_the_field(daemon, fields, param):
    response = rerank(daemon, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_no_model_with_several_served_asks_for_one(daemon):
    response = httpx.post(daemon.url + "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_unknown_model_is_a_404(daemon):
    response = rerank(daemon, model="nope")
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


def test_llama_server_without_reranking_is_a_501_saying_how(daemon):
    response = rerank(daemon, model="tiny")
    error = response.json()["error"]
    assert response.status_code == 501 and error["code"] == "rerank_unavailable"
    assert "llama-chat" in error["message"] and "--reranking" in error["message"]


def test_the_engine_cannot_rerank_a_model_that_is_no_reranker(daemon):
    response = rerank(daemon, model="eng-tiny")
    error = response.json()["error"]
    assert response.status_code == 501 and error["code"] == "rerank_unavailable"
    assert "engine" in error["message"] and "--reranking" in error["message"]
    assert "not a reranker: llama.pooling_type is None, not RANK" in error["message"]


PARITY_SETS = {
    "plain": (QUERY, DOCUMENTS),
    "multilingual": ("où est la capitale de la France ? 首都はどこ",
                     ["Paris est la capitale de la France", "東京は日本の首都です", "Straße über Brücken",
                      "emoji 🙂 and ünïcödé"]),
    "empty-ish": (QUERY, ["", " ", ".", "paris"]),
    "long": (QUERY, ["the capital of france is paris " * 20, "short", "cats and dogs " * 35]),    # under 512 tokens with the template
}


@pytest.mark.parametrize("name", PARITY_SETS)
@pytest.mark.parametrize("model, server", [("eng-rerank", "reranker"), ("eng-rerank-t", "templated")])
def test_engine_scores_equal_llama_servers(daemon, request, model, server, name):
    """The engine on llama-server's own reranker file (without and with a rerank template): the
    same order, scores within 1e-4, the same token counts (its prompt layout)."""
    query, documents = PARITY_SETS[name]
    engine = rerank(daemon, model=model, query=query, documents=documents)
    url = request.getfixturevalue(server).url
    direct = httpx.post(url + "/v1/rerank", json={"query": query, "documents": documents}, timeout=60).json()
    assert engine.status_code == 200 and engine.headers["x-velollm-backend"] == "engine"
    ours, theirs = engine.json(), direct
    assert [r["index"] for r in ours["results"]] == [r["index"] for r in theirs["results"]]
    for mine, llama in zip(ours["results"], theirs["results"]):
        assert abs(mine["relevance_score"] - llama["relevance_score"]) < 1e-4
    assert ours["usage"] == theirs["usage"] and ours["model"] == model and ours["object"] == "list"


def test_engine_top_n_and_documents(daemon):
    full = rerank(daemon, model="eng-rerank").json()["results"]
    shown = rerank(daemon, model="eng-rerank", top_n=2, return_documents=True).json()["results"]
    assert [{"index": r["index"], "relevance_score": r["relevance_score"]} for r in shown] == full[:2]
    assert [r["document"] for r in shown] == [{"text": DOCUMENTS[r["index"]]} for r in full[:2]]


def test_engine_refuses_a_pair_longer_than_its_context(daemon):
    response = rerank(daemon, model="eng-rerank", documents=["short", "word " * 600])
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "documents" and "document 1" in error["message"]


def test_a_reranker_still_chats_as_on_llama_server(daemon):
    """llama-server started with --reranking answers /v1/chat/completions on a reranker with an
    LM head (its output.weight); so does the engine."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for model in ("tiny-rerank", "eng-rerank"):
        response = httpx.post(daemon.url + "/v1/chat/completions", json={**body, "model": model}, timeout=60)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def test_vllm_answer_is_passed_on(daemon, scripted):
    vllm, _ = scripted
    response = rerank(daemon, model="m", documents=[{"text": "a"}, "b"], top_n=2)
    assert response.status_code == 200 and response.headers["x-velollm-backend"] == "vllm"
    assert response.json()["results"] == VLLM_ANSWER["results"]
    assert vllm.bodies[-1] == {"model": "m", "query": QUERY, "documents": ["a", "b"], "top_n": 2}


def test_server_without_rerank_route_is_a_501(daemon):
    response = rerank(daemon, model="plain")
    assert response.status_code == 501
    assert "plain" in response.json()["error"]["message"] and "404" in response.json()["error"]["message"]


def test_keys_gate_rerank_as_they_gate_embeddings(scripted):
    """The caller's key: required, its `models` globs (another model is a 404), its rpm (429)."""
    vllm, _ = scripted
    keys = [{"name": "rag", "key": "sk-rag", "models": ["m"], "rpm": 1},
            {"name": "chat", "key": "sk-chat", "models": ["tiny*"]}]
    table = {"backends": [{"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]}],
             "cache": {"enabled": False}, "keys": keys}
    body = {"model": "m", "query": QUERY, "documents": ["a", "b"]}
    with RunningDaemon(table) as running:
        def post(key: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            return httpx.post(running.url + "/v1/rerank", json=body, headers=headers, timeout=30)

        assert post(None).status_code == 401
        assert post("sk-chat").status_code == 404
        assert post("sk-rag").status_code == 200
        refused = post("sk-rag")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_malformed_backend_answer_is_a_502(tmp_path):
    bad = {"results": [{"index": 5, "relevance_score": 0.5}]}          # no such document
    server = ScriptedServer({"POST /v1/rerank": (200, json.dumps(bad).encode())})
    table = {"backends": [{"name": "odd", "kind": "openai", "url": server.url, "models": ["m"]}],
             "cache": {"enabled": False}}
    try:
        with RunningDaemon(table) as running:
            response = httpx.post(running.url + "/v1/rerank", json={"model": "m", "query": QUERY,
                                                                    "documents": ["a", "b"]}, timeout=30)
    finally:
        server.close()
    assert response.status_code == 502 and "odd" in response.json()["error"]["message"]


def score(daemon, path: str = "/score", **fields) -> httpx.Response:
    return httpx.post(daemon.url + path, json=fields, timeout=60)


@pytest.mark.parametrize("model", ["tiny-rerank", "eng-rerank"])
@pytest.mark.parametrize("path", SCORE_PATHS)
def test_score_one_text_against_many_is_the_rerank_in_the_documents_order(daemon, model, path):
    answer = score(daemon, path, model=model, text_1=QUERY, text_2=DOCUMENTS)
    ranked = rerank(daemon, model=model).json()
    by_index = {r["index"]: r["relevance_score"] for r in ranked["results"]}
    assert answer.status_code == 200
    body = answer.json()
    assert body["data"] == [{"index": i, "object": "score", "score": by_index[i]} for i in range(len(DOCUMENTS))]
    assert body["usage"]["prompt_tokens"] == ranked["usage"]["prompt_tokens"] and body["model"] == model
    assert body["object"] == "list" and body["id"].startswith("score-")


def test_score_pairwise_scores_each_pair_on_its_own(daemon):
    text_1 = [QUERY, "hello", QUERY]
    text_2 = ["paris is the capital of france", "hello world", "a big red apple"]
    data = score(daemon, model="eng-rerank", text_1=text_1, text_2=text_2).json()["data"]
    alone = [rerank(daemon, model="eng-rerank", query=q, documents=[d]).json()["results"][0]["relevance_score"]
             for q, d in zip(text_1, text_2)]
    assert [d["score"] for d in data] == alone and [d["index"] for d in data] == [0, 1, 2]


def test_score_one_pair_of_strings(daemon):
    data = score(daemon, model="eng-rerank", text_1=QUERY, text_2="hello world").json()["data"]
    assert len(data) == 1 and 0 < data[0]["score"] < 1


@pytest.mark.parametrize("fields, param", [
    ({"text_2": ["a"]}, "text_1"), ({"text_1": "q"}, "text_2"), ({"text_1": 3, "text_2": "a"}, "text_1"),
    ({"text_1": "q", "text_2": []}, "text_2"), ({"text_1": "q", "text_2": ["a", 1]}, "text_2"),
    ({"text_1": ["q", "r"], "text_2": ["a", "b", "c"]}, "text_1"), ({"text_1": [], "text_2": "a"}, "text_1"),
])
def test_score_bad_fields_are_a_400_naming_the_field(daemon, fields, param):
    response = score(daemon, model="eng-rerank", **fields)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_score_on_a_model_that_cannot_rerank_is_the_reranks_501(daemon):
    response = score(daemon, model="eng-tiny", text_1=QUERY, text_2=DOCUMENTS)
    assert response.status_code == 501 and response.json()["error"]["code"] == "rerank_unavailable"
