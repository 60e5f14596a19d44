"""The engine's next-token probabilities against llama-server's on the parity test's sharp
random files (tests/backends/test_engine_parity.py), over many prompts instead of its three.

The sharp files amplify any float32 difference that moves a rounded activation across a Q8_0
boundary, so one prompt's nMSE is noisy; the median and the tail over --prompts prompts say
whether the engine's arithmetic moved closer to llama.cpp's. Run it in two checkouts (e.g. this
tree and one at main) to compare; the files and prompts are the same in both.

    .venv/bin/python benchmarks/engine_parity.py [--files llama-q8_0,qwen2-q8_0] [--prompts 100]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from tests.backends import test_engine_parity as parity
from tests.engine.weights import write_random_gguf
from tests.rig.llama import LlamaServer, llama_server_binary, tiny_gguf_tool
from velollmd.ctl.bench.stats import percentile


def prompts(num: int, seed: int = 7) -> list[str]:
    """num prompts of 6..30 words of the tiny vocabulary."""
    words, rng = list(tiny_gguf_tool().WORDS), np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(6, 31)))) for _ in range(num)]


def measure(name: str, folder: Path, texts: list[str]) -> None:
    arch, dtype = name.split("-")
    path = write_random_gguf(folder / f"{name}.gguf", arch, parity.SEED_OF_ARCH[arch], dtype=dtype,
                             vocab=parity.VOCAB_OF_ARCH[arch], **parity.SHAPE)
    model, tokenizer = parity.load_engine_model(path)
    suppressed, nmses, argmax_differs = parity.suppressed_ids(arch), [], 0
    with LlamaServer(path, binary=llama_server_binary(), parallel=1, ctx_size=512,
                     extra_args=parity.LLAMA_ARGS) as server:
        for text in texts:
            try:
                nmses.append(parity.top10_nmse(server, model, tokenizer.encode(text), suppressed))
            except AssertionError:          # the top token differs (a near-tie on a sharp file)
                argmax_differs += 1
    q = [percentile(nmses, 50), percentile(nmses, 90), max(nmses)]
    print(f"{name}: top-10 nMSE over {len(nmses)} prompts: median {q[0]:.2e}, p90 {q[1]:.2e}, "
          f"max {q[2]:.2e}; mean {np.mean(nmses):.2e}; top token differs on {argmax_differs}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="llama-q8_0,qwen2-q8_0")
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.files.split(","):
            measure(name, Path(folder), texts)


if __name__ == "__main__":
    main()
