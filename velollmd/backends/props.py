"""llama-server's GET /props answer, for the llama-server clients pointed at velollmd (llama.cpp's
own web UI, SillyTavern's llama.cpp type, scripts reading the context size). What they read:
`default_generation_settings.n_ctx` (a slot's context) and `.params` (the sampling defaults:
temperature, top_k, top_p, min_p, max_tokens / n_predict), `total_slots`, `model_path` (the web
UI shows its file name), `model_alias`, `modalities.vision` / `.audio` (the web UI offers image
and audio inputs by them), `chat_template` (SillyTavern hashes it to pick its instruct
template: a string always, "" where there is none), `bos_token`, `eos_token`, `build_info`.

llama-server's own answer is passed through with the served name as `model_alias` and the
routes velollmd does not serve turned off (`endpoint_slots`: /slots is refused, as it shows
other users' prompts; `cors_proxy_enabled`: no /cors-proxy here). The engine's is built in the
same shape from its GGUF and the defaults it samples with."""
from __future__ import annotations

from .. import __version__
from ..engine.loader import LoadedModel
from ..engine.sampling import RANDOM_SEED, SamplingParams

BUILD_INFO = f"velollmd {__version__}"
LLAMA_DEFAULT_SEED = 0xFFFFFFFF          # llama.cpp's LLAMA_DEFAULT_SEED: "random", as its /props reports it
NO_LIMIT = -1                            # llama-server's n_predict / max_tokens: until a stop or the context ends
ENGINE_SAMPLERS = ("penalties", "top_k", "top_p", "min_p", "temperature")    # engine/sampling.py's chain
NOT_SERVED_HERE = {"endpoint_slots": False, "endpoint_props": False, "cors_proxy_enabled": False}


def passed_through_props(props: dict, served_name: str) -> dict:
    """llama-server's own /props as velollmd serves it: named as velollmd serves the model."""
    return {**props, "model_alias": served_name, **NOT_SERVED_HERE}


def engine_props(model: LoadedModel, *, served_name: str, n_ctx: int, total_slots: int) -> dict:
    """The engine's /props for a loaded `model`, keys and types as llama-server gives them."""
    tokenizer = model.tokenizer

    def text(token_id: int | None) -> str:
        return tokenizer.token_to_piece(token_id) if token_id is not None else ""

    return {"default_generation_settings": {"params": default_params(SamplingParams()), "n_ctx": n_ctx},
            "total_slots": total_slots, "model_alias": served_name, "model_path": str(model.path),
            "modalities": {"vision": False, "video": False, "audio": False}, **NOT_SERVED_HERE,
            "chat_template": model.chat_template_source, "bos_token": text(tokenizer.bos_id),
            "eos_token": text(tokenizer.eos_id), "build_info": BUILD_INFO, "is_sleeping": False}


def default_params(defaults: SamplingParams) -> dict:
    """`default_generation_settings.params`: what a request that sets nothing samples with."""
    seed = LLAMA_DEFAULT_SEED if defaults.seed in (None, RANDOM_SEED) else defaults.seed
    limit = NO_LIMIT if defaults.max_tokens is None else defaults.max_tokens
    return {"seed": seed, "temperature": defaults.temperature, "top_k": defaults.top_k, "top_p": defaults.top_p,
            "min_p": defaults.min_p, "repeat_last_n": defaults.repeat_last_n, "repeat_penalty": defaults.repeat_penalty,
            "presence_penalty": defaults.presence_penalty, "frequency_penalty": defaults.frequency_penalty,
            "max_tokens": limit, "n_predict": limit, "ignore_eos": False, "stream": False, "n_probs": 0,
            "samplers": list(ENGINE_SAMPLERS)}
