"""Read a GGUF file's header and metadata key/values (no tensors), in pure Python.

Layout (GGUF v2/v3, little-endian): magic b"GGUF", uint32 version, uint64 tensor_count,
uint64 kv_count, then kv_count times: string key, uint32 value type, value. A string is a
uint64 length + UTF-8 bytes; an array is uint32 item type + uint64 count + items. Arrays
(tokenizer vocabularies: 100k+ strings) are skipped and stored as `ArrayInfo(type, count)`,
which is all the tuner needs (the vocabulary size). It lives in ctl/ beside the tuner, its one
user: hw/ probes the machine, and a model file is not the machine.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

GGUF_MAGIC = b"GGUF"
MAX_KV = 1_000_000
MAX_STRING = 1 << 24

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, an unsupported version, or a truncated/corrupt header."""


@dataclass(frozen=True)
class ArrayInfo:
    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    tensor_count: int
    file_size: int
    metadata: dict


class _Reader:
    def __init__(self, f):
        self.f = f

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError("truncated GGUF header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise GGUFError(f"string of {n} bytes in header")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, value_type: int):
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            return self.skip_array()
        raise GGUFError(f"unknown GGUF value type {value_type}")

    def skip_array(self) -> ArrayInfo:
        item_type, count = self.unpack("<I"), self.unpack("<Q")
        if item_type in _SCALARS:
            self.f.seek(count * struct.calcsize(_SCALARS[item_type]), os.SEEK_CUR)
        elif item_type == _STRING:
            for _ in range(count):
                self.f.seek(self.unpack("<Q"), os.SEEK_CUR)
        else:
            for _ in range(count):         # arrays of arrays: rare, skip recursively
                self.value(item_type)
        return ArrayInfo(item_type, count)


def read_gguf_header(path: str) -> GGUFHeader:
    """Parse magic, version, counts and all metadata; raises GGUFError or OSError."""
    with open(path, "rb") as f:
        reader = _Reader(f)
        if reader.take(4) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version}")
        tensor_count, kv_count = reader.unpack("<Q"), reader.unpack("<Q")
        if kv_count > MAX_KV:
            raise GGUFError(f"{path}: {kv_count} metadata entries")
        metadata = {}
        for _ in range(kv_count):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        return GGUFHeader(version, tensor_count, os.fstat(f.fileno()).st_size, metadata)
