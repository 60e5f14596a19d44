"""CFFI build script (API mode, out-of-line) for the engine's decode kernels: the matmul (matmul.c),
the Q8_0, Q4_K, Q5_K, Q6_K, Q4_0, Q5_0, Q4_1 and Q5_1 integer matmuls (matmul_q8.c, matmul_q4k.c,
matmul_q5k.c, matmul_q6k.c, matmul_legacy.c), the paged decode attention (attention.c; over an f16
KV cache attention_f16.c and attention_f16c.c, which include it) and the FFN's silu(gate) * up
(activations.c).

setup.py lists this file in `cffi_modules` beside the block allocator's, so `pip install -e .`
(make install) compiles both into `velollmd.engine._matmul`, with OpenMP for its threads.
Only velollmd/engine/kernels.py imports that extension.
"""
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def _source_path(path: pathlib.Path) -> str:
    """setuptools prefers sources relative to setup.py's directory (the cwd when it runs)."""
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


HEADERS = ("matmul.h", "matmul_q8.h", "matmul_q4k.h", "matmul_q5k.h", "matmul_q6k.h", "attention.h",
           "matmul_legacy.h", "activations.h")
SOURCES = ("matmul.c", "matmul_q8.c", "matmul_q4k.c", "matmul_q5k.c", "matmul_q6k.c", "attention.c",
           "attention_f16.c", "attention_f16c.c", "matmul_legacy.c", "activations.c")


def cdef_from_header(text: str) -> str:
    """A header as cffi's cdef: comments and preprocessor lines dropped."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_from_header((HERE / name).read_text()) for name in HEADERS))
ffibuilder.set_source(
    "velollmd.engine._matmul",
    "\n".join(f'#include "{name}"' for name in HEADERS),
    sources=[_source_path(HERE / name) for name in SOURCES],
    include_dirs=[str(HERE)],
    # gnu11: GCC's vector extensions; fp-contract: a * b + c as one FMA where the CPU has it
    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"],
    extra_link_args=["-fopenmp"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
