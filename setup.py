"""setup.cfg holds the metadata; this file exists for cffi_modules (the C block allocator, the
engine's decode matmul)."""
import os

from setuptools import setup

CFFI_MODULES = [
    path + ":ffibuilder"
    for path in ["velollmd/sched/_kvblocks_build.py", "velollmd/engine/_matmul_build.py"]
    if os.path.exists(path)
]

setup(cffi_modules=CFFI_MODULES)
