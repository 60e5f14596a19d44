"""velollmd.engine: the in-process inference engine (GGUF models on numpy; CUDA later).

Pure compute: no sockets, no asyncio, no HTTP (the backend in backends/engine.py wraps it).
One module a job:

    gguf.py          read_gguf(path) -> GGUFFile: metadata, tensor infos, mmapped tensor bytes
    quants.py        dequantize(raw, ggml_type, shape) -> float32 array (F32 .. Q6_K)
    tokenizer.py     Tokenizer.from_gguf(metadata): SentencePiece and GPT-2 byte-level BPE
    pretokenize.py   the BPE pre-tokenizer splits (llama3, qwen2, gpt2) and merge loops
    templates.py     chat templates recognised from tokenizer.chat_template, rendered in Python
                     (one templates_<family>.py per family, templates_messages.py for messages)
    prompt.py        chat_prompt: a template rendered with the vocab's BOS/EOS, as llama.cpp does
    sampling.py      SamplingParams, Sampler (per sequence), sample_batch
    detokenize.py    TextStream: UTF-8 and stop strings across token boundaries
    ops.py           RMSNorm, RoPE (both pairings), attention over a cached prefix
    kvcache.py       PagedKVCache: K/V of shape (layers, blocks, block_size, kv_heads, head_dim)
    model.py         ModelConfig from metadata; Model.forward over a packed batch and the KV cache
    runner.py        the engine loop: scheduler + model + sampling, stepped in a worker thread
    loader.py        probe a file (header only) or load it into a Runner
    store.py         which GGUF files to serve: a file, a folder, Ollama's local model store
"""
