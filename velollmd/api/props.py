"""llama-server's server-information routes, for the clients written against llama-server
(llama.cpp's web UI, SillyTavern's llama.cpp type): GET /props answers for the model chosen as
llama-server's other routes choose it (`?model=`, or the only model), built by its backend
(backends/props.py): llama-server's own passed through, the engine's built in its shape; a model
on another backend is a 501 naming it.

POST /props (llama-server's way to change its global settings, refused there without `--props`)
is a 501 here whatever the body: velollmd's settings are its config file. GET /slots is a 501
too: llama-server's answer shows each slot's prompt and settings, other callers' among them,
which velollmd's API keys keep apart; the web UI reads the 501 as "no /slots" and carries on.
"""
from __future__ import annotations

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..errors import NotImplementedByBackend
from ..http.message import Request, Response
from .access import Access
from .tokenize import admitted_backend, model_query_or_body


class PropsRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline):
        self.access, self.registry, self.pipeline = access, registry, pipeline

    def register(self, router) -> None:
        router.add("GET", "/props", self.props)
        router.add("POST", "/props", self.change_props)
        router.add("GET", "/slots", self.slots)

    async def props(self, request: Request) -> Response:
        backend, model = await admitted_backend(self.access, self.registry, self.pipeline, request,
                                                model_query_or_body(request), capability="serves_props")
        return Response.json(await backend.server_props(model))

    async def change_props(self, request: Request) -> Response:
        raise NotImplementedByBackend("velollmd does not change a server's properties through POST /props "
                                      "(llama-server refuses it too unless started with --props): its settings "
                                      "are its config file, a model's sampling defaults are each request's",
                                      code="props_read_only")

    async def slots(self, request: Request) -> Response:
        raise NotImplementedByBackend("GET /slots is not served: llama-server's answer shows each slot's prompt "
                                      "and settings, other callers' among them; /props gives the slots' number "
                                      "(total_slots) and context (default_generation_settings.n_ctx)",
                                      code="slots_not_served")
