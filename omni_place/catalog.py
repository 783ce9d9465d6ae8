"""The GPU catalog: datasheet figures for known GPUs, read from ``data/gpu_catalog.toml``.

The TOML file is the single source of truth; this module only loads, validates and matches it.
NVML-discovered GPUs are matched by the name NVML reports (``nvmlDeviceGetName``) and, where one
name covers several memory sizes, by their total memory. Cluster files name an entry with
``catalog = "..."`` (the entry's name or any alias, case-insensitive).
"""
from __future__ import annotations

import difflib
import functools
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ClusterError
from .units import GiB

#: PCIe payload bandwidth per lane and direction in GB/s, after line coding (8b/10b for gen 1-2,
#: 128b/130b for gen 3-5, FLIT for gen 6). The one table every link figure derives from.
PCIE_GBS_PER_LANE: dict[int, float] = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
PCIE_WIDTHS = (1, 2, 4, 8, 16, 32)

#: Reported memory may be below the nominal size (ECC, reserved pages) by this fraction.
MEMORY_MATCH_TOLERANCE = 0.10

_CATALOG_FILE = "gpu_catalog.toml"
_WHERE = f"omni_place/data/{_CATALOG_FILE}"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "memory_gib": (int, float), "bandwidth_gbs": (int, float),
    "fp16_tflops": (int, float), "compute_capability": str, "pcie_gen": int, "pcie_width": int,
    "aliases": list, "source": str, "note": str, "fp32_accumulate_share": (int, float),
}
_SPEED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "compute_capability": str, "decode_bw_share": (int, float), "layer_us": (int, float),
    "mmq_share": (int, float), "source": str, "mla_decode_share": (int, float), "prompt_layer_us": (int, float),
}
_SPEED_OPTIONAL = {"mla_decode_share", "prompt_layer_us"}  # a row without them takes the default row's
#: the ``[[speed]]`` row for GPUs whose compute capability has no row of its own
DEFAULT_SPEED_ROW = "default"
_OPTIONAL = {"note", "fp32_accumulate_share"}


def pcie_gbs(gen: int, width: int) -> float:
    """PCIe bandwidth per direction in GB/s for a link of generation ``gen`` and ``width`` lanes.

    Raises:
        ClusterError: the generation is not in :data:`PCIE_GBS_PER_LANE` or the width is not a
            PCIe lane count.
    """
    if gen not in PCIE_GBS_PER_LANE:
        raise ClusterError(f"unknown PCIe generation {gen!r} (known: {sorted(PCIE_GBS_PER_LANE)})")
    if width not in PCIE_WIDTHS:
        raise ClusterError(f"invalid PCIe width x{width!r} (valid: {', '.join(map(str, PCIE_WIDTHS))})")
    return PCIE_GBS_PER_LANE[gen] * width


@dataclass(frozen=True)
class GpuSpec:
    """One catalog entry (units as in ``data/gpu_catalog.toml``)."""

    name: str
    memory_gib: float
    bandwidth_gbs: float
    fp16_tflops: float
    compute_capability: str
    pcie_gen: int
    pcie_width: int
    aliases: tuple[str, ...]
    source: str
    note: str = ""
    fp32_accumulate_share: float = 1.0  # FP16 tensor math accumulating in FP32 (attention's), of fp16_tflops

    @property
    def memory_bytes(self) -> int:
        return int(round(self.memory_gib * GiB))

    @property
    def link_gbs(self) -> float:
        """Host-link bandwidth per direction the card supports, GB/s."""
        return pcie_gbs(self.pcie_gen, self.pcie_width)


@dataclass(frozen=True)
class SpeedShare:
    """What llama.cpp's CUDA backend achieves of a GPU's datasheet figures, for GPUs of one
    compute capability (``[[speed]]`` in ``data/gpu_catalog.toml``; derived from llama-bench
    records by ``benchmarks/public_gpus.py``).

    Attributes:
        decode_bw_share: achieved / datasheet memory bandwidth in decode's matrix-vector products.
        layer_us: fixed decode microseconds per layer and token (kernel launches, the small ops).
        mmq_share: achieved / ``fp16_tflops`` in prompt matmuls (MMQ's int8 tensor-core kernels).
        mla_decode_share: achieved / the FP32-accumulate tensor rate by the flash-attention mma
            kernel decoding MLA's 576-wide heads over a cache (``cost.CostModel.kv_tg``); a row
            that gives none takes the default row's.
        prompt_layer_us: fixed prompt microseconds per layer and ubatch (each kernel's shortest
            run: MMQ's stream-k and fixup passes, the activations' quantization, flash attention,
            the norms), whatever the layer's width; a row that gives none takes the default row's.
    """

    compute_capability: str
    decode_bw_share: float
    layer_us: float
    mmq_share: float
    source: str
    mla_decode_share: float
    prompt_layer_us: float


def normalize_name(name: str) -> str:
    """Canonical form for matching: case-folded, single spaces, no leading ``NVIDIA``."""
    text = " ".join(name.split()).casefold()
    return text.removeprefix("nvidia ").strip()


@functools.cache
def load_catalog() -> tuple[GpuSpec, ...]:
    """Every catalog entry, in file order (read and validated once per process).

    Raises:
        ClusterError: the shipped catalog is malformed (a packaging bug).
    """
    doc = _catalog_doc()
    specs: list[GpuSpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(doc.get("gpu", [])):
        label = f"{_WHERE}: [[gpu]] #{i + 1}"
        missing = set(_FIELDS) - _OPTIONAL - set(entry)
        unknown = set(entry) - set(_FIELDS)
        if missing or unknown:
            raise ClusterError(f"{label}: missing {sorted(missing)}, unknown {sorted(unknown)}")
        for key, value in entry.items():
            if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
                raise ClusterError(f"{label}: {key} = {value!r} has the wrong type")
        spec = GpuSpec(
            name=entry["name"], memory_gib=float(entry["memory_gib"]),
            bandwidth_gbs=float(entry["bandwidth_gbs"]), fp16_tflops=float(entry["fp16_tflops"]),
            compute_capability=entry["compute_capability"], pcie_gen=entry["pcie_gen"], pcie_width=entry["pcie_width"],
            aliases=tuple(entry["aliases"]), source=entry["source"], note=entry.get("note", ""),
            fp32_accumulate_share=float(entry.get("fp32_accumulate_share", 1.0)),
        )
        if not 0 < spec.fp32_accumulate_share <= 1:
            raise ClusterError(f"{label}: fp32_accumulate_share = {spec.fp32_accumulate_share} is not in (0, 1]")
        spec.link_gbs  # noqa: B018  (validates the PCIe figures)
        key = normalize_name(spec.name)
        if key in seen:
            raise ClusterError(f"{label}: name {spec.name!r} duplicates {seen[key]!r}")
        seen[key] = spec.name
        specs.append(spec)
    if not specs:
        raise ClusterError(f"{_WHERE}: the GPU catalog has no [[gpu]] entries")
    return tuple(specs)


@functools.cache
def _catalog_doc() -> dict[str, Any]:
    """The catalog file, parsed once (its ``[[gpu]]`` and ``[[speed]]`` tables)."""
    ref = resources.files("omni_place") / "data" / _CATALOG_FILE
    try:
        return tomllib.loads(ref.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ClusterError(f"{_WHERE}: cannot read the GPU catalog: {err}",
                           hint="reinstall omni_place; the package data is damaged") from None


@functools.cache
def speed_shares() -> dict[str, SpeedShare]:
    """The ``[[speed]]`` rows by compute capability (one of them :data:`DEFAULT_SPEED_ROW`).

    Raises:
        ClusterError: the shipped catalog is malformed (a packaging bug).
    """
    doc = _catalog_doc()
    entries = doc.get("speed", [])
    default = next((e for e in entries if isinstance(e, dict)
                    and e.get("compute_capability") == DEFAULT_SPEED_ROW), {})
    if not all(isinstance(default.get(k), (int, float)) and not isinstance(default.get(k), bool)
               for k in _SPEED_OPTIONAL):
        raise ClusterError(f"{_WHERE}: no [[speed]] row for compute_capability = {DEFAULT_SPEED_ROW!r} "
                           "with every share")
    rows: dict[str, SpeedShare] = {}
    for i, entry in enumerate(entries):
        label = f"{_WHERE}: [[speed]] #{i + 1}"
        if not set(_SPEED_FIELDS) - _SPEED_OPTIONAL <= set(entry) <= set(_SPEED_FIELDS) or any(
                not isinstance(v, _SPEED_FIELDS[k]) or isinstance(v, bool) for k, v in entry.items()):
            raise ClusterError(f"{label}: needs {sorted(set(_SPEED_FIELDS) - _SPEED_OPTIONAL)} (and may give "
                               f"{sorted(_SPEED_OPTIONAL)}) with their types")
        row = SpeedShare(entry["compute_capability"], float(entry["decode_bw_share"]), float(entry["layer_us"]),
                         float(entry["mmq_share"]), entry["source"],
                         float(entry.get("mla_decode_share", default["mla_decode_share"])),
                         float(entry.get("prompt_layer_us", default["prompt_layer_us"])))
        if not (0 < row.decode_bw_share <= 1 and 0 < row.mmq_share <= 1 and 0 < row.layer_us < 1e4
                and 0 <= row.prompt_layer_us < 1e4 and 0 < row.mla_decode_share <= 1) \
                or row.compute_capability in rows:
            raise ClusterError(f"{label}: shares must lie in (0, 1], layer_us in (0, 1e4), prompt_layer_us in "
                               "[0, 1e4), and each compute capability appear once")
        rows[row.compute_capability] = row
    return rows


def speed_share(compute_capability: str | None) -> SpeedShare:
    """The speed row of a GPU of this compute capability, else the default row."""
    rows = speed_shares()
    return rows.get(compute_capability or DEFAULT_SPEED_ROW, rows[DEFAULT_SPEED_ROW])


def lookup(name: str) -> GpuSpec | None:
    """The entry whose name, or else whose alias, equals ``name`` (normalized); else None.

    An alias shared by several sizes (``NVIDIA GeForce RTX 3060``) resolves to the first entry;
    use the entry name (``RTX 3060 12GB``) to be explicit.
    """
    key = normalize_name(name)
    specs = load_catalog()
    for spec in specs:
        if normalize_name(spec.name) == key:
            return spec
    for spec in specs:
        if any(normalize_name(alias) == key for alias in spec.aliases):
            return spec
    return None


def suggest(name: str, n: int = 3) -> list[str]:
    """Catalog entry names closest to ``name``, for "did you mean" hints."""
    names = {normalize_name(s.name): s.name for s in load_catalog()}
    return [names[k] for k in difflib.get_close_matches(normalize_name(name), names, n=n, cutoff=0.5)]


def match_gpu(nvml_name: str, total_bytes: int | None = None) -> GpuSpec | None:
    """The catalog entry for a GPU NVML calls ``nvml_name`` with ``total_bytes`` of memory.

    Only aliases match (marketing names differ from NVML's). When ``total_bytes`` is known, the
    entry's nominal memory must be within :data:`MEMORY_MATCH_TOLERANCE` of it, and the closest
    size wins; a size the catalog lacks (say an 8 GB RTX 3060) matches nothing.
    """
    key = normalize_name(nvml_name)
    candidates = [s for s in load_catalog() if any(normalize_name(a) == key for a in s.aliases)]
    if total_bytes is None:
        return candidates[0] if candidates else None
    sized = [s for s in candidates
             if abs(s.memory_bytes - total_bytes) <= MEMORY_MATCH_TOLERANCE * s.memory_bytes]
    return min(sized, key=lambda s: abs(s.memory_bytes - total_bytes), default=None)
