"""vLLM's GET /tokenizer_info answer, built for a backend that has no such route (the engine,
llama-server). vLLM answers its Hugging Face tokenizer's `init_kwargs` (tokenizer_config.json:
bos_token, eos_token, pad_token, unk_token, add_bos_token, add_eos_token, model_max_length,
...) with `tokenizer_class` (the tokenizer's Python class name) and `chat_template` (when it
has one) added; lm-evaluation-harness's remote tokenizer reads bos_token, eos_token,
pad_token and chat_template from it. A token the tokenizer lacks is null, as in
tokenizer_config.json."""
from __future__ import annotations

from ..engine.loader import LoadedModel

# transformers' class for a GGUF's tokenizer (the one vLLM reports serving it), by architecture
TOKENIZER_CLASSES = {"llama": "LlamaTokenizerFast", "mistral3": "LlamaTokenizerFast",
                     "qwen2": "Qwen2TokenizerFast", "qwen3": "Qwen2TokenizerFast",
                     "gemma2": "GemmaTokenizerFast", "gemma3": "GemmaTokenizerFast"}
GENERIC_CLASS = "PreTrainedTokenizerFast"      # transformers' class for a tokenizer of no known family


def tokenizer_info(*, tokenizer_class: str, bos_token: str | None, eos_token: str | None,
                   model_max_length: int, chat_template: str | None, pad_token: str | None = None,
                   unk_token: str | None = None, add_bos_token: bool | None = None,
                   add_eos_token: bool | None = None) -> dict:
    """The answer, keys as tokenizer_config.json names them; add_*_token and chat_template only
    when known."""
    info = {"tokenizer_class": tokenizer_class, "bos_token": bos_token, "eos_token": eos_token,
            "pad_token": pad_token, "unk_token": unk_token, "model_max_length": model_max_length}
    known = {"add_bos_token": add_bos_token, "add_eos_token": add_eos_token, "chat_template": chat_template or None}
    return {**info, **{name: value for name, value in known.items() if value is not None}}


def tokenizer_class_of(arch: str) -> str:
    return TOKENIZER_CLASSES.get(arch, GENERIC_CLASS)


def gguf_tokenizer_info(model: LoadedModel, model_max_length: int) -> dict:
    """The engine's answer: the GGUF's tokenizer and the chat template it renders with."""
    tokenizer = model.tokenizer

    def text(token_id: int | None) -> str | None:
        return tokenizer.token_to_piece(token_id) if token_id is not None else None

    return tokenizer_info(tokenizer_class=tokenizer_class_of(model.config.arch), bos_token=text(tokenizer.bos_id),
                          eos_token=text(tokenizer.eos_id), pad_token=text(tokenizer.pad_id),
                          unk_token=text(tokenizer.unk_id), add_bos_token=tokenizer.add_bos,
                          add_eos_token=tokenizer.add_eos, model_max_length=model_max_length,
                          chat_template=model.chat_template_source)
