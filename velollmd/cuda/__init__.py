"""velollmd.cuda: the engine's CUDA kernels and what checks them without a GPU.

*.cu    plain CUDA C kernels (halves via PTX cvt, no cuda_fp16.h), each compiling on its own.
sources the kernel files, their entry points and the -D defines the engine passes.
kernels PyCUDA launchers (pycuda imported lazily: this package imports without it).
reference the numpy references of the paged layouts; the math references are engine/ops.py.
mirror  numpy replays of each kernel's thread/block decomposition, for tests on any machine.

Imports only numpy and the stdlib (pycuda lazily): it knows no engine (setup.cfg's contract).
"""
