"""Reranking: POST /v1/rerank and the paths llama-server and vLLM also answer it on.

The Jina / Cohere shape RAG apps send (Open WebUI's external reranker, LangChain, LlamaIndex,
Dify): {model, query, documents, top_n, return_documents} -> {model, results: [{index,
relevance_score, document?}], usage}, best first. Served by the model's backend when it can
rerank (llama-server started with --reranking, a vLLM serving a reranker); Ollama and the
engine cannot: a 501 saying how to serve one. Admitted as embeddings are: the key's model
access and limits, no scheduler slot, never cached.

`model` is optional, as on llama-server and vLLM: without one, the one model the caller may
use. `return_documents` true adds each result's document ({"text": ...}, Jina's and Cohere's
spelling), which llama-server never sends; false takes it out; absent, the backend's answer
stands.
"""
from __future__ import annotations

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..http.message import Request, Response
from .access import Access
from .openai import to_response
from .tokenize import model_or_only
from .validate import validate_rerank

# /v1/rerank: Jina's and Cohere's; /rerank, /v2/rerank: vLLM's; /reranking, /v1/reranking: llama-server's
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank", "/reranking", "/v1/reranking")


class RerankRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service

    def register(self, router) -> None:
        for path in RERANK_PATHS:
            router.add("POST", path, self.rerank)

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


def show_documents(results: list[dict], documents: list[str], shown: bool) -> None:
    """Each result's document as {"text": ...} (shown), or none (not shown)."""
    for result in results:
        if shown:
            result["document"] = {"text": documents[result["index"]]}
        else:
            result.pop("document", None)
