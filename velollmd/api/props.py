"""llama-server's server-information routes, for the clients written against llama-server
(llama.cpp's web UI, SillyTavern's llama.cpp type): GET /props answers for the model chosen as
llama-server's other routes choose it (`?model=`, or the only model), built by its backend
(backends/props.py): llama-server's own passed through, the engine's built in its shape; a model
on another backend is a 501 naming it. Without `?model=` while several models answer /props,
velollmd is a llama-server router (api/router_models.py) and answers as one: `role` "router",
which is how llama.cpp's web UI tells router mode, with the router's placeholder fields.

POST /props (llama-server's way to change its global settings, refused there without `--props`)
is a 501 here whatever the body: velollmd's settings are its config file. GET /slots is a 501
too: llama-server's answer shows each slot's prompt and settings, other callers' among them,
which velollmd's API keys keep apart; the web UI reads the 501 as "no /slots" and carries on.
"""
from __future__ import annotations

from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..errors import NotImplementedByBackend
from ..backends.props import BUILD_INFO, NOT_SERVED_HERE
from ..http.message import Request, Response
from .access import Access
from .tokenize import admitted_backend, model_query_or_body, served_names

# llama-server's router /props (server-models.cpp get_router_props) but build_info: placeholders
# where a model's props go ("to make sure the UI doesn't break"); no cap on loaded models across
# backends (max_instances 0, llama-server's "unlimited": an engine keeps its own max_loaded_models);
# a request loads its model (models_autoload)
ROUTER_PROPS = {"role": "router", "max_instances": 0, "models_autoload": True, "model_alias": "llama-server",
                "model_path": "none", "default_generation_settings": {"params": {}, "n_ctx": 0},
                "ui_settings": {}, "build_info": BUILD_INFO,
                "cors_proxy_enabled": NOT_SERVED_HERE["cors_proxy_enabled"]}


class PropsRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline):
        self.access, self.registry, self.pipeline = access, registry, pipeline

    def register(self, router) -> None:
        router.add("GET", "/props", self.props)
        router.add("POST", "/props", self.change_props)
        router.add("GET", "/slots", self.slots)

    async def props(self, request: Request) -> Response:
        asked = model_query_or_body(request)
        if "model" not in asked and len(served_names(self.access, self.registry, request, "serves_props")) > 1:
            return Response.json(ROUTER_PROPS)
        backend, model = await admitted_backend(self.access, self.registry, self.pipeline, request,
                                                asked, capability="serves_props")
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
