"""Small GGUF files written with the PyPI `gguf` package (test-only)."""
import gguf
import numpy as np


def write_gguf(path, *, name="Test", layers=32, heads=32, kv_heads=8, embd=4096, ctx=131072,
               vocab=1000, file_type=15, pad_bytes=0, arch="llama"):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_embedding_length(embd)
    writer.add_context_length(ctx)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("pad", np.zeros(max(pad_bytes // 4, 1), dtype=np.float32))  # (n,) float32
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
