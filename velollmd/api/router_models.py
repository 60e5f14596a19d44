"""llama-server's router mode (one server, several models: `llama-server --models-dir`), which
llama.cpp's web UI and a growing set of clients speak to pick among models. velollmd serving
several models is such a router, and answers as llama-server's does (tools/server/server-models.cpp):

- GET /models (llama-server also serves the list without /v1) and /v1/models: the OpenAI list,
  each entry with the router's fields the web UI reads: `status.value` ("loaded", "unloaded",
  "loading": what the backend knows, Backend.model_status), `path` (the engine's GGUF, "" for a
  model another server holds) and `in_cache` (false: velollmd keeps no Hugging Face cache).
- POST /models/load and /models/unload {"model"}: {"success": true}, as llama-server answers.
  Only a backend that loads its models itself (the engine, Ollama) does: the same load and
  unload an Ollama client gets (an empty /api/generate; keep_alive 0), so a model busy serving
  is unloaded once idle. A model on another backend is a 501 naming it; loading a loaded model or
  unloading one not loaded is a 400, as on llama-server (Ollama's /api/ps is read first, so the
  answer is what Ollama holds now, not what the last health check saw). A backend that is down
  answers as a chat for its model would: 503 when the health check knows it, else 502. They
  change what every caller gets, so they are guarded as the cache flush is: an API key, or with
  none configured a loopback client.
- GET /props without a model while several models answer /props: the router's own answer
  (`role` "router", api/props.py).
"""
from __future__ import annotations

from ..backends.base import Backend, ModelInfo
from ..backends.registry import Registry
from ..errors import BadRequest, NotFound, NotImplementedByBackend
from ..http.message import Request, Response
from .access import Access


def router_fields(registry: Registry, model: ModelInfo) -> dict:
    """The fields llama-server's router adds to a /v1/models entry, as llama.cpp's web UI reads them."""
    backend, served = registry.backend_of(model), registry.resolve(model.id)
    return {"status": {"value": backend.model_status(served)}, "path": backend.model_path(served), "in_cache": False}


class RouterModelsRoutes:
    def __init__(self, access: Access, registry: Registry, list_models):
        self.access, self.registry = access, registry
        self.list_models = list_models             # the OpenAI routes' GET /v1/models, router fields and all

    def register(self, router) -> None:
        router.add("GET", "/models", self.list_models)
        router.add("POST", "/models/load", self.load)
        router.add("POST", "/models/unload", self.unload)

    async def load(self, request: Request) -> Response:
        backend, model = await self._loader_for(request, "loading a model")
        if backend.model_status(model) == "loaded":
            raise BadRequest(f"model '{model}' is already loaded", param="model", code="model_already_loaded")
        backend.keep_model(model, None)              # its usual keep-alive, as a request without keep_alive
        await backend.load_model(model)
        return Response.json({"success": True})

    async def unload(self, request: Request) -> Response:
        backend, model = await self._loader_for(request, "unloading a model")
        if backend.model_status(model) == "unloaded":
            raise BadRequest(f"model '{model}' is not loaded", param="model", code="model_not_loaded")
        backend.keep_model(model, 0)                 # keep_alive 0: if busy now, unloaded once idle
        await backend.unload_model(model)
        return Response.json({"success": True})

    async def _loader_for(self, request: Request, what: str) -> tuple[Backend, str]:
        """The backend that loads the body's `model` itself, and the served name; 401 for a
        caller who may not change the daemon's state, 400 bad body, 404 unknown model (or one
        the caller's key may not use), 501 a model on a backend that keeps its models itself,
        503 / 502 its backend down (known to the health check / found now)."""
        self.access.check_local_or_keyed(request, what)
        self.access.refuse_if_draining()
        model = request.json().get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model must be a non-empty string naming a served model", param="model")
        self.access.admit(request, model)
        await self.registry.freshen()
        backend = self.registry.backend_of(self._listed(model))
        if not backend.loads_models:
            raise NotImplementedByBackend(
                f"backend {backend.name} keeps its models loaded itself: velollmd loads and "
                f"unloads only the in-process engine's and Ollama's models", param="model", code="load_unsupported")
        await backend.read_loaded_models()
        return backend, self.registry.resolve(model)

    def _listed(self, model: str) -> ModelInfo:
        """`model`'s catalogue entry; a model only a backend that is down could serve is out of
        the catalogue: a 503 naming the backend's error, as a chat for it answers, not a 404."""
        try:
            return self.registry.find_model(model)
        except NotFound:
            self.registry.candidates(model)
            raise
