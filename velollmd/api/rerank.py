"""Reranking: POST /v1/rerank and the paths llama-server and vLLM also answer it on.

The Jina / Cohere shape RAG apps send (Open WebUI's external reranker, LangChain, LlamaIndex,
Dify): {model, query, documents, top_n, return_documents} -> {model, results: [{index,
relevance_score, document?}], usage}, best first. Served by the model's backend when it can
rerank (the engine on a reranker GGUF, llama-server started with --reranking, a vLLM serving a
reranker); Ollama and other models cannot: a 501 saying why and how to serve one. Admitted as
embeddings are: the key's model access and limits, no scheduler slot, never cached.

`model` is optional, as on llama-server and vLLM: without one, the one model the caller may
use. `return_documents` true adds each result's document ({"text": ...}, Jina's and Cohere's
spelling), which llama-server never sends; false takes it out; absent, the backend's answer
stands.

vLLM's POST /score ({model, text_1, text_2} -> {data: [{index, object: "score", score}], usage},
one score per pair in the pairs' order) is served over the same reranking: the pairs grouped
by their text_1, one rerank per group.
"""
from __future__ import annotations

import time

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..http.message import Request, Response
from ..wire.ids import response_id
from ..wire.outcome import Outcome
from .access import Access
from .openai import to_response
from .tokenize import model_or_only
from .validate import validate_rerank, validate_score

# /v1/rerank: Jina's and Cohere's; /rerank, /v2/rerank: vLLM's; /reranking, /v1/reranking: llama-server's
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank", "/reranking", "/v1/reranking")
SCORE_PATHS = ("/score", "/v1/score")                  # vLLM's


class RerankRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service

    def register(self, router) -> None:
        for path in RERANK_PATHS:
            router.add("POST", path, self.rerank)
        for path in SCORE_PATHS:
            router.add("POST", path, self.score)

    async def rerank(self, request: Request) -> Response:
        body = validate_rerank(request.json())
        body["model"] = model_or_only(self.access, self.registry, request, body)
        return_documents = body.pop("return_documents", None)
        key_name = self.access.admit(request, body["model"], defer=True)
        await self.pipeline.admit(key_name)                  # the key's limits, shared when they are
        outcome = await self.service.rerank(body)
        self.pipeline.record_key_usage(key_name, outcome.body.get("usage"))
        if return_documents is not None:
            show_documents(outcome.body["results"], body["documents"], return_documents)
        return to_response(outcome, 0)

    async def score(self, request: Request) -> Response:
        body = validate_score(request.json())
        model = body["model"] = model_or_only(self.access, self.registry, request, body)
        key_name = self.access.admit(request, model, defer=True)
        await self.pipeline.admit(key_name)
        scores, num_tokens, headers = [0.0] * len(body["text_2"]), 0, {}
        for query, indices in pairs_by_query(body["text_1"], body["text_2"]).items():
            outcome = await self.service.rerank({"model": model, "query": query,
                                                 "documents": [body["text_2"][i] for i in indices]})
            for result in outcome.body["results"]:
                scores[indices[result["index"]]] = result["relevance_score"]
            num_tokens += (outcome.body.get("usage") or {}).get("prompt_tokens") or 0
            headers = outcome.headers
        usage = {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0}
        self.pipeline.record_key_usage(key_name, usage)
        return to_response(Outcome(headers, body=score_answer(model, scores, usage)), 0)


def pairs_by_query(text_1: list[str], text_2: list[str]) -> dict[str, list[int]]:
    """The indices of text_2 each text_1 is scored against: all of them for one text_1, else
    pairwise (the same text_1 in several pairs: one group)."""
    groups: dict[str, list[int]] = {}
    for index in range(len(text_2)):
        groups.setdefault(text_1[index if len(text_1) > 1 else 0], []).append(index)
    return groups


def score_answer(model: str, scores: list[float], usage: dict) -> dict:
    """vLLM's /score answer: one score per pair, in the pairs' order."""
    return {"id": response_id("score"), "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": index, "object": "score", "score": score} for index, score in enumerate(scores)],
            "usage": usage}


def show_documents(results: list[dict], documents: list[str], shown: bool) -> None:
    """Each result's document as {"text": ...} (shown), or none (not shown)."""
    for result in results:
        if shown:
            result["document"] = {"text": documents[result["index"]]}
        else:
            result.pop("document", None)
