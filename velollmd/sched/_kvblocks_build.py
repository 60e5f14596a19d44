"""CFFI build script (API mode, out-of-line) for the C block allocator.

setup.py lists this file in `cffi_modules`, so `pip install -e .` (make install) compiles
kvblocks.c into the extension `velollmd.sched._kvblocks`. Only velollmd/sched/kvblocks.py
imports that extension.
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
    """kvblocks.h as cffi's cdef: comments and preprocessor plumbing dropped, every constant
    `#define NAME ...` (its value is read from the compiled header, API mode). One source of
    truth for the C interface."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        define = re.match(r"#define (KV_\w+) ", line)
        if define:
            lines.append(f"#define {define.group(1)} ...")
        elif not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


CDEF = cdef_from_header((HERE / "kvblocks.h").read_text())

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "velollmd.sched._kvblocks",
    '#include "kvblocks.h"',
    sources=[_source_path(HERE / "kvblocks.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
