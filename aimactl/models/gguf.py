"""A small GGUF header reader: parameter count, weight bytes and tensor types, without loading any weights.

GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic `GGUF`, version (2 or 3), tensor count,
metadata count (all little-endian u64), the metadata key/value pairs, then one record per tensor: name, number
of dimensions, dimensions, ggml type, data offset. The weight bytes of a tensor follow from its element count
and its type's block size and bytes per block (the table below is ggml's, checked against the `gguf` package in
tests/test_placement_estimate.py). Only the header is read: a 40 GB model costs a few megabytes of reading.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO

MAGIC = b"GGUF"
# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
# metadata value type id -> struct format of a scalar (8: string, 9: array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_STRING = 1 << 26
_MAX_COUNT = 1 << 32


class GgufError(ValueError):
    """Not a GGUF file, or a header this reader does not understand (the message says which)."""


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF header says about the weights."""

    version: int
    parameters: int
    """Elements over all tensors."""
    weight_bytes: int
    """Bytes the tensors take (what an engine loads into GPU memory)."""
    tensor_types: dict[str, int] = field(default_factory=dict)
    """ggml type name -> number of tensors of that type (`Q4_K: 121, F32: 65`)."""
    architecture: str | None = None


class _Reader:
    def __init__(self, handle: BinaryIO, where: str):
        self.handle, self.where = handle, where

    def take(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise GgufError(f"{self.where}: the GGUF header is cut short")
        return data

    def scalar(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def u32(self) -> int:
        return int(self.scalar("<I"))

    def u64(self) -> int:
        return int(self.scalar("<Q"))

    def string(self) -> str:
        size = self.u64()
        if size > _MAX_STRING:
            raise GgufError(f"{self.where}: a {size}-byte string in the header: not a GGUF file this reader trusts")
        return self.take(size).decode("utf-8", "replace")

    def value(self, kind: int) -> object:
        """One metadata value; arrays are skipped element by element (only scalars and strings are kept)."""
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.u32(), self.u64()
            if count > _MAX_COUNT:
                raise GgufError(f"{self.where}: an array of {count} items in the header")
            if item in _SCALARS:  # fixed-size items: skip them in one read
                self.take(struct.calcsize(_SCALARS[item]) * count)
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise GgufError(f"{self.where}: unknown metadata value type {kind}")


def read_gguf(handle: BinaryIO, where: str = "model") -> GgufInfo:
    """Read a GGUF header from an open binary file; GgufError names what is wrong."""
    reader = _Reader(handle, where)
    if reader.take(4) != MAGIC:
        raise GgufError(f"{where}: not a GGUF file (no GGUF magic)")
    version = reader.u32()
    if version not in (2, 3):
        raise GgufError(f"{where}: GGUF version {version} is not supported (2 and 3 are)")
    tensors, entries = reader.u64(), reader.u64()
    architecture = None
    for _ in range(entries):
        key = reader.string()
        value = reader.value(reader.u32())
        if key == "general.architecture" and isinstance(value, str):
            architecture = value
    parameters = weight_bytes = 0
    types: Counter[str] = Counter()
    for _ in range(tensors):
        reader.string()
        dims = [reader.u64() for _ in range(reader.u32())]
        kind = reader.u32()
        reader.u64()  # offset into the data section
        if kind not in GGML_TYPES:
            raise GgufError(f"{where}: tensor type {kind} is unknown to this reader")
        name, block, size = GGML_TYPES[kind]
        elements = 1
        for dim in dims:
            elements *= dim
        parameters += elements
        weight_bytes += elements // block * size
        types[name] += 1
    return GgufInfo(version, parameters, weight_bytes, dict(sorted(types.items())), architecture)


def read_gguf_file(path: str) -> GgufInfo:
    """Read the header of a GGUF file on this machine."""
    try:
        with open(path, "rb") as handle:
            return read_gguf(handle, path)
    except OSError as exc:
        raise GgufError(f"{path}: {exc.strerror or exc}") from None
