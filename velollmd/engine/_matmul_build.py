"""CFFI build script (API mode, out-of-line) for the engine's decode matmul (matmul.c).

setup.py lists this file in `cffi_modules` beside the block allocator's, so `pip install -e .`
(make install) compiles matmul.c into `velollmd.engine._matmul`, with OpenMP for its threads.
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


def cdef_from_header(text: str) -> str:
    """matmul.h as cffi's cdef: comments and preprocessor lines dropped."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header((HERE / "matmul.h").read_text()))
ffibuilder.set_source(
    "velollmd.engine._matmul",
    '#include "matmul.h"',
    sources=[_source_path(HERE / "matmul.c")],
    include_dirs=[str(HERE)],
    # gnu11: GCC's vector extensions; fp-contract: a * b + c as one FMA where the CPU has it
    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"],
    extra_link_args=["-fopenmp"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
