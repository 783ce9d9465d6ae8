"""Quantization tags in GGUF file names (``Q4_K_M``, ``IQ3_XXS``, ``UD-Q2_K_XL``, ``BF16``,
``MXFP4_MOE``...), the files of a repository grouped into models (split shards together, quants in
sub-folders as unsloth publishes them) and the one quality order of tags.

Quality order: bits per weight of the tag's base ggml type (:mod:`omni_place.ggml_types`: the gguf
package's table, which llama.cpp maintains, and ik_llama.cpp's types), then the mix suffix
llama-quantize gives it (``_XXS`` < ``_XS`` < ``_S`` < none < ``_M`` < ``_L`` < ``_XL``), then
unsloth's dynamic ``UD-`` variant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import InvalidArgumentError
from ..ggml_types import GgmlType, ggml_type_named

# A tag between non-alphanumeric characters; the longest spelling wins (Q4_K_M over Q4_K). ik_llama.cpp's
# types (IQ4_KS, IQ2_KT, IQ3_K_R4: ubergarm's quants) are tags too.
_TAG = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:(?:I?Q[1-8]|TQ[12])_[01K](?:_(?:XXS|XS|XXL|XL|S|M|L))?"
    r"|IQ[1-4]_(?:XXS|XS|NL|S|M)|IQ[1-6]_K(?:SS|S|T|L)?|MXFP4(?:_MOE)?|BF16|F16|F32)(?:_R[48])?)(?![A-Za-z0-9])",
    re.IGNORECASE | re.ASCII,
)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE | re.ASCII)
SUFFIX_ORDER = ("XXS", "XS", "S", "", "M", "L", "XL", "XXL")
# llama-quantize mixes named after no ggml type, by the type they are built on
# (src/llama-quant.cpp llama_model_quantize_impl: default_type of each LLAMA_FTYPE_MOSTLY_*)
MIX_BASE = {"IQ2_M": "IQ2_S", "IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S", "MXFP4_MOE": "MXFP4"}


def quant_tag(path: str) -> str | None:
    """The quant tag of a repository file (upper case), from its name, else its folders."""
    for part in reversed(PurePosixPath(path).parts):
        found = _TAG.findall(part)
        if found:
            return found[-1].upper()
    return None


def base_type(tag: str) -> GgmlType | None:
    """The ggml type a tag's mix is built on (Q4_K_M -> Q4_K), None if unknown."""
    name = tag.upper().removeprefix("UD-")
    name = MIX_BASE.get(name, name)
    for candidate in (name, name.rsplit("_", 1)[0]):
        try:
            return ggml_type_named(candidate)
        except KeyError:
            continue
    return None


def nominal_bpw(tag: str) -> float | None:
    """Bits per weight of the tag's base ggml type (Q4_K: 4.5), None for an unknown tag."""
    t = base_type(tag)
    if t is None:
        return None
    return t.bytes * 8 / t.block


def quality_key(tag: str | None, measured_bpw: float = 0.0) -> tuple[float, int, int]:
    """Sort key, higher is better: bits per weight (the tag's, else the file's ``measured_bpw``),
    the mix suffix, UD- last."""
    if tag is None or nominal_bpw(tag) is None:
        return (measured_bpw, SUFFIX_ORDER.index(""), 0)
    name = tag.upper().removeprefix("UD-")
    base = base_type(tag)
    suffix = name[len(base.name) + 1:] if base is not None and name.startswith(base.name + "_") else ""
    if name in MIX_BASE:
        suffix = name.rsplit("_", 1)[1]
    rank = SUFFIX_ORDER.index(suffix) if suffix in SUFFIX_ORDER else SUFFIX_ORDER.index("")
    return (nominal_bpw(tag) or 0.0, rank, int(tag.upper().startswith("UD-")))


@dataclass(frozen=True)
class FileGroup:
    """One model in a repository: a single file or every shard of a split one."""

    tag: str | None
    files: tuple[str, ...]  # first shard first

    @property
    def first(self) -> str:
        return self.files[0]


def group_files(paths: list[str]) -> list[FileGroup]:
    """The GGUF models among a repository's files (vision projectors ``mmproj*`` left out),
    split shards grouped; sorted by quality, best last."""
    groups: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for p in paths:
        name = PurePosixPath(p).name
        if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
            continue
        m = _SHARD.search(p)
        key, no, count = (p[: m.start()], int(m[1]), int(m[2])) if m else (p, 1, 1)
        groups.setdefault(key, {})[no] = p
        counts[key] = count
    out = []
    for key, shards in groups.items():
        if sorted(shards) != list(range(1, counts[key] + 1)):
            raise InvalidArgumentError(f"{key}: the repository lists shards {sorted(shards)} of {counts[key]}",
                                       hint="the upload may be incomplete; pick another quant or revision")
        out.append(FileGroup(quant_tag(shards[1]), tuple(shards[i] for i in sorted(shards))))
    return sorted(out, key=lambda g: (quality_key(g.tag), g.first))


def pick_group(groups: list[FileGroup], quant: str | None, where: str) -> FileGroup:
    """The group of ``quant`` (case-insensitive; none given: Q4_K_M as llama.cpp's ``-hf`` picks,
    else the only model). No or several matches: InvalidArgumentError listing what there is."""
    if not groups:
        raise InvalidArgumentError(f"{where} has no GGUF model files", hint="check the repository and revision")
    available = ", ".join(dict.fromkeys(g.tag or g.first for g in groups))
    if quant is None:
        found = [g for g in groups if g.tag == "Q4_K_M"] or (groups if len(groups) == 1 else [])
        if not found:
            raise InvalidArgumentError(f"{where} has several quants: {available}",
                                       hint=f"pick one, e.g. {where}:{groups[-1].tag or 'QUANT'}")
    else:
        found = [g for g in groups if g.tag == quant.upper()]
        if not found:
            raise InvalidArgumentError(f"{where} has no quant {quant!r}; it has: {available}",
                                       hint="pick one of those")
    if len(found) > 1:
        raise InvalidArgumentError(f"{where} has {len(found)} models of quant {found[0].tag}: "
                                   + ", ".join(g.first for g in found),
                                   hint=f"name the file: {where}/{found[0].first}")
    return found[0]


def shard_names(first: str) -> list[str]:
    """Every shard name of a split file from the first one's (``-00001-of-00009.gguf``)."""
    m = _SHARD.search(first)
    if not m:
        return [first]
    count = int(m[2])
    return [f"{first[: m.start()]}-{i:05d}-of-{count:05d}{first[m.end() - 5:]}" for i in range(1, count + 1)]


__all__ = ["FileGroup", "MIX_BASE", "SUFFIX_ORDER", "base_type", "group_files", "nominal_bpw", "pick_group",
           "quality_key", "quant_tag", "shard_names"]
