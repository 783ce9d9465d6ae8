"""ggml weight types: the bytes a tensor of each type takes, for every engine omni_place plans for.

Mainline's types come from the ``gguf`` package (``GGML_QUANT_SIZES``). ik_llama.cpp stores types
mainline lacks (IQ2_K .. IQ6_K, IQ2_KS .. IQ5_KS, the trellis IQ*_KT, Q6_0, BitNet, _R4/_R8 repacks)
under enum values the ``gguf`` package does not know; ``data/ik_types.toml`` lists them. Several
carry a per-row scale ahead of the row's blocks (``row_meta``, ik: ggml/src/ggml.c type_traits), so
a tensor's bytes are ``rows x (row_meta + bytes x elements / block)`` (ik: ggml.c:4774-4811).
"""
from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_FILE = "ik_types.toml"
_FIELDS = ("name", "id", "block", "bytes", "row_meta")


@dataclass(frozen=True)
class GgmlType:
    """One ggml type: its enum value, name (upper case, as ggml's enum), block and byte sizes."""

    id: int
    name: str
    block: int  # elements per block
    bytes: int  # bytes per block
    row_meta: int = 0  # bytes per row ahead of its blocks (ik's row scales)

    def row_bytes(self, n: int) -> int:
        """``ggml_row_size``: bytes of a row of ``n`` elements (ggml's integer division: whole blocks)."""
        return self.row_meta + n // self.block * self.bytes

    def tensor_bytes(self, shape: Iterable[int]) -> int:
        """``ggml_nbytes`` of a contiguous tensor; ``shape`` in ggml order (ne0 first)."""
        shape = tuple(shape)
        return math.prod(shape[1:]) * self.row_bytes(shape[0])


@functools.cache
def _table() -> dict[int, GgmlType]:
    types = {int(t): GgmlType(int(t), t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType
             if t in GGML_QUANT_SIZES}
    doc = tomllib.loads((resources.files("omni_place") / "data" / _FILE).read_text(encoding="utf-8"))
    for row in doc["types"]:
        if tuple(row) != _FIELDS or row["id"] in types:
            raise RuntimeError(f"omni_place/data/{_FILE}: bad or duplicate row {row!r}")  # a packaging bug
        types[row["id"]] = GgmlType(row["id"], row["name"], row["block"], row["bytes"], row["row_meta"])
    return types


@functools.cache
def _by_name() -> dict[str, GgmlType]:
    return {t.name: t for t in _table().values()}


def ggml_type(type_id: int) -> GgmlType:
    """The type stored as ``type_id`` in a GGUF tensor info.

    Raises:
        KeyError: no engine omni_place knows has that type.
    """
    return _table()[type_id]


def ggml_type_named(name: str) -> GgmlType:
    """The type called ``name`` (any case: ``"iq4_ks"``, ``"Q4_K"``).

    Raises:
        KeyError: no such type.
    """
    return _by_name()[name.upper()]


def is_ik_only(type_id: int) -> bool:
    """Whether only ik_llama.cpp (not mainline llama.cpp) can load a tensor of this type."""
    return type_id in _table() and type_id not in GGMLQuantizationType._value2member_map_
