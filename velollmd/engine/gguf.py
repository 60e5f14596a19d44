"""Read a GGUF file: metadata, tensor infos, and the tensor bytes as views into an mmap.

Layout (GGUF v2/v3, little-endian; ggml/docs/gguf.md):

    magic b"GGUF", uint32 version, uint64 tensor_count, uint64 kv_count
    kv_count x   (string key, uint32 value_type, value)
    tensor_count x (string name, uint32 n_dims, uint64 dims[n_dims], uint32 ggml_type, uint64 offset)
    padding to general.alignment, then the tensor data; offsets are relative to its start

A string is a uint64 length + UTF-8 bytes; an array is uint32 item type + uint64 count + items.
Metadata values come back as Python scalars (int, float, bool, str); arrays of numbers as 1-D
numpy arrays (copies, dtype of the item type: uint8 .. float64, bool), arrays of strings as
list[str], arrays of arrays as lists. Strings that are not valid UTF-8 decode with
"surrogateescape" (`s.encode("utf-8", "surrogateescape")` gives the bytes back).

Tensor shapes are in numpy order: ggml's dims reversed, so a weight reads (out, in).
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from velollmd.engine.quants import GGML_BLOCK_SIZES, dequantize, type_name

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
MAX_STRING_BYTES = 1 << 30

_STRING, _ARRAY = 8, 9
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_ARRAY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}


class GGUFError(ValueError):
    """Not a GGUF file, an unsupported version, a truncated file, or a bad type code."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]    # numpy order: ggml dims reversed, weights are (out, in)
    offset: int               # absolute byte offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


class _Cursor:
    """Sequential little-endian reads from the mapped file, bounds-checked."""

    def __init__(self, buf: mmap.mmap, path: str):
        self.buf, self.path, self.pos = buf, path, 0
        self.where = "header"      # named in truncation errors

    def fail(self, reason: str) -> GGUFError:
        return GGUFError(f"{self.path}: {reason}")

    def take(self, num_bytes: int) -> bytes:
        end = self.pos + num_bytes
        if end > len(self.buf):
            raise self.fail(f"truncated file: {self.where} needs bytes {self.pos}..{end}, "
                            f"file has {len(self.buf)}")
        data = self.buf[self.pos:end]   # a copy: no buffer export pins the mmap open
        self.pos = end
        return data

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        num_bytes = self.scalar("<Q")
        if num_bytes > MAX_STRING_BYTES:
            raise self.fail(f"{self.where}: string of {num_bytes} bytes")
        return str(self.take(num_bytes), "utf-8", "surrogateescape")

    def value(self, value_type: int):
        if value_type in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            return self.array()
        raise self.fail(f"{self.where}: bad value type code {value_type}")

    def array(self):
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        if item_type in _ARRAY_DTYPES:
            dtype = np.dtype(_ARRAY_DTYPES[item_type])
            if count > len(self.buf):
                raise self.fail(f"truncated file: {self.where} holds {count} items")
            return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).copy()  # (count,)
        if item_type not in (_STRING, _ARRAY):
            raise self.fail(f"{self.where}: bad array item type code {item_type}")
        if count > len(self.buf):   # every item takes at least 8 bytes: cannot fit
            raise self.fail(f"truncated file: {self.where} holds {count} items")
        return [self.value(item_type) for _ in range(count)]


class GGUFFile:
    """An open GGUF file. Tensor bytes stay in the mmap; raw() views them without a copy.

    Arrays from raw() keep the mapping alive: close() releases the file at once when no view
    is left, otherwise when the last view is garbage-collected.
    """

    def __init__(self, path: str, version: int, metadata: dict[str, object],
                 tensors: dict[str, TensorInfo], data_offset: int, buf: mmap.mmap):
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors = tensors
        self.data_offset = data_offset
        self.alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        self._buf: mmap.mmap | None = buf

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, (nbytes,) uint8, a read-only view into the mapped file."""
        if self._buf is None:
            raise GGUFError(f"{self.path}: file is closed")
        info = self._info(name)
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array of info.shape."""
        info = self._info(name)
        return dequantize(self.raw(name), info.ggml_type, info.shape)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None

    def close(self) -> None:
        buf, self._buf = self._buf, None
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass   # views from raw() still use it; it closes when they are collected

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Map path and parse its header, metadata and tensor infos; raises GGUFError or OSError."""
    path = str(Path(path))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(GGUF_MAGIC):
            raise GGUFError(f"{path}: not a GGUF file ({size} bytes, shorter than the magic)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(buf, path)
    except BaseException:
        buf.close()
        raise


def _parse(buf: mmap.mmap, path: str) -> GGUFFile:
    cursor = _Cursor(buf, path)
    if bytes(cursor.take(4)) != GGUF_MAGIC:
        raise cursor.fail(f"not a GGUF file (bad magic {bytes(buf[:4])!r})")
    version = cursor.scalar("<I")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian file?)" if swapped in SUPPORTED_VERSIONS else ""
        raise cursor.fail(f"unsupported GGUF version {version}{hint}; supported: 2, 3")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = _read_metadata(cursor, kv_count)
    alignment = _alignment(cursor, metadata)
    infos = _read_tensor_infos(cursor, tensor_count)
    data_offset = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, ggml_type, shape, rel_offset in infos:
        if name in tensors:
            raise cursor.fail(f"duplicate tensor name {name!r}")
        tensors[name] = _tensor_info(cursor, name, ggml_type, shape, rel_offset, data_offset, alignment)
    return GGUFFile(path, version, metadata, tensors, data_offset, buf)


def _read_metadata(cursor: _Cursor, kv_count: int) -> dict[str, object]:
    metadata: dict[str, object] = {}
    for index in range(kv_count):
        cursor.where = f"metadata entry {index}"
        key = cursor.string()
        cursor.where = f"metadata {key!r}"
        if key in metadata:
            raise cursor.fail(f"duplicate metadata key {key!r}")
        metadata[key] = cursor.value(cursor.scalar("<I"))
    return metadata


def _alignment(cursor: _Cursor, metadata: dict[str, object]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cursor.fail(f"general.alignment {alignment!r} is not a power of two")
    return alignment


def _read_tensor_infos(cursor: _Cursor, tensor_count: int) -> list[tuple[str, int, tuple[int, ...], int]]:
    infos = []
    for index in range(tensor_count):
        cursor.where = f"tensor info {index}"
        name = cursor.string()
        cursor.where = f"tensor info {name!r}"
        n_dims = cursor.scalar("<I")
        if n_dims > GGML_MAX_DIMS:
            raise cursor.fail(f"tensor {name!r}: {n_dims} dimensions, at most {GGML_MAX_DIMS}")
        ggml_dims = [cursor.scalar("<Q") for _ in range(n_dims)]
        ggml_type, rel_offset = cursor.scalar("<I"), cursor.scalar("<Q")
        infos.append((name, ggml_type, tuple(reversed(ggml_dims)), rel_offset))
    return infos


def _tensor_info(cursor: _Cursor, name: str, ggml_type: int, shape: tuple[int, ...],
                 rel_offset: int, data_offset: int, alignment: int) -> TensorInfo:
    if ggml_type not in GGML_BLOCK_SIZES:
        raise cursor.fail(f"tensor {name!r}: bad ggml type code {ggml_type}")
    block_size, type_size = GGML_BLOCK_SIZES[ggml_type]
    if shape and shape[-1] % block_size:
        raise cursor.fail(f"tensor {name!r}: row length {shape[-1]} is not a multiple of the "
                          f"{type_name(ggml_type)} block size {block_size}")
    if rel_offset % alignment:
        raise cursor.fail(f"tensor {name!r}: data offset {rel_offset} not aligned to {alignment}")
    nbytes = math.prod(shape) // block_size * type_size
    offset = data_offset + rel_offset
    if offset + nbytes > len(cursor.buf):
        raise cursor.fail(f"truncated file: tensor {name!r} data needs bytes {offset}..{offset + nbytes}, "
                          f"file has {len(cursor.buf)}")
    return TensorInfo(name, ggml_type, shape, offset, nbytes)
