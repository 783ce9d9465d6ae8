"""NVML discovery: this machine's NVIDIA GPUs as Devices.

:func:`discover` (GPUs plus the local CPU) and :func:`discover_gpus` (the GPUs alone, for a
cluster file with ``discover = true``) are the entry points. ``_import_nvml`` is the one place
``pynvml`` is imported: tests patch it here. A missing driver, library or field is never an
error: the GPU is then left out (or filled from the catalog) and a note says why.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..catalog import PCIE_GBS_PER_LANE, PCIE_WIDTHS, GpuSpec, match_gpu, pcie_gbs
from ..units import GB
from .cluster import (
    DEFAULT_GPU_BANDWIDTH_GBS,
    DEFAULT_PCIE,
    DEFAULT_PCIE_LATENCY_US,
    Cluster,
    Device,
    _cpu_notes,
    _gpu_speed_notes,
    _local_cpu,
)
from .cudacopy import with_stream_rates

__all__ = ["discover", "discover_gpus"]

LOGGER = logging.getLogger(__name__)

# NVML C enum values (ABI-stable). Not read from pynvml: nvidia-ml-py defines
# NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma), which ctypes rejects.
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2
_NVML_P2P_CAPS_INDEX_READ = 0
_NVML_P2P_STATUS_OK = 0


class _Nvml:
    """The one place omni_place calls NVML.

    Every query returns ``default`` instead of raising when the binding lacks the function or
    NVML answers with an error (NotSupported, FunctionNotFound with an old driver, GPU lost), or
    ctypes rejects the arguments (a binding that does not match the driver).
    """

    def __init__(self, lib: ModuleType | Any) -> None:
        self.lib = lib
        self.errors: tuple[type[BaseException], ...] = (
            getattr(lib, "NVMLError", OSError), OSError, ctypes.ArgumentError)
        self._init_errors: tuple[type[BaseException], ...] = (*self.errors, AttributeError)
        self._v2_errors: tuple[type[BaseException], ...] = (*self.errors, TypeError)

    def query(self, fn: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        func = getattr(self.lib, fn, None)
        if func is None:
            LOGGER.debug("NVML binding has no %s", fn)
            return default
        try:
            return func(*args, **kwargs)
        except self.errors as err:
            LOGGER.debug("NVML %s%r failed: %s", fn, args, err)
            return default

    def start(self) -> str | None:
        """Initialise NVML: None on success, else why it is unusable."""
        try:
            self.lib.nvmlInit()
        except self._init_errors as err:  # AttributeError: a binding without nvmlInit
            return str(err) or type(err).__name__
        return None

    def stop(self) -> None:
        self.query("nvmlShutdown")

    def memory(self, handle: Any) -> tuple[int | None, int | None]:
        """(total, free) bytes; ``nvmlDeviceGetMemoryInfo_v2`` (free excludes reserved) first."""
        v2 = getattr(self.lib, "nvmlMemory_v2", None)
        info = None
        if v2 is not None:
            try:
                info = self.lib.nvmlDeviceGetMemoryInfo(handle, version=v2)
            except self._v2_errors as err:  # old driver, or a binding without `version`
                LOGGER.debug("NVML memory info v2 unavailable (%s); using v1", err)
        if info is None:
            info = self.query("nvmlDeviceGetMemoryInfo", handle)
        return _int_or_none(getattr(info, "total", None)), _int_or_none(getattr(info, "free", None))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.strip("\x00 ") if isinstance(value, str) and value.strip("\x00 ") else None


@dataclass
class _NvmlGpu:
    """What NVML says about one GPU (None where it would not say)."""

    index: int
    handle: Any
    name: str
    uuid: str | None = None
    bus_id: str | None = None
    total: int | None = None
    free: int | None = None
    cc: tuple[int, int] | None = None
    cores: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    bus_width_bits: int | None = None
    pcie_max: tuple[int | None, int | None] = (None, None)
    pcie_curr: tuple[int | None, int | None] = (None, None)

    @property
    def bus_key(self) -> tuple[int, ...]:
        """PCI (domain, bus, device, function) for sorting; unparsable ids sort last."""
        m = re.fullmatch(r"([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)\.([0-9a-f]+)", (self.bus_id or "").lower())
        return tuple(int(g, 16) for g in m.groups()) if m else (1 << 32, self.index)

    @property
    def speed_score(self) -> int:
        """CUDA cores x max SM clock (MHz): the throughput proxy for fastest-first ordering."""
        return (self.cores or 0) * (self.sm_clock_mhz or 0)


def _read_nvml_gpu(nvml: _Nvml, index: int, handle: Any) -> _NvmlGpu:
    q = nvml.query
    gpu = _NvmlGpu(index=index, handle=handle,
                   name=_text(q("nvmlDeviceGetName", handle)) or f"NVIDIA GPU {index}")
    gpu.uuid = _text(q("nvmlDeviceGetUUID", handle))
    pci = q("nvmlDeviceGetPciInfo", handle)
    gpu.bus_id = _text(getattr(pci, "busId", None)) if pci is not None else None
    gpu.total, gpu.free = nvml.memory(handle)
    cc = q("nvmlDeviceGetCudaComputeCapability", handle)
    if isinstance(cc, tuple) and len(cc) == 2:
        gpu.cc = (int(cc[0]), int(cc[1]))
    gpu.cores = _int_or_none(q("nvmlDeviceGetNumGpuCores", handle))
    gpu.sm_clock_mhz = _int_or_none(q("nvmlDeviceGetMaxClockInfo", handle, _NVML_CLOCK_SM))
    gpu.mem_clock_mhz = _int_or_none(q("nvmlDeviceGetMaxClockInfo", handle, _NVML_CLOCK_MEM))
    gpu.bus_width_bits = _int_or_none(q("nvmlDeviceGetMemoryBusWidth", handle))
    gpu.pcie_max = (_int_or_none(q("nvmlDeviceGetMaxPcieLinkGeneration", handle)),
                    _int_or_none(q("nvmlDeviceGetMaxPcieLinkWidth", handle)))
    gpu.pcie_curr = (_int_or_none(q("nvmlDeviceGetCurrPcieLinkGeneration", handle)),
                     _int_or_none(q("nvmlDeviceGetCurrPcieLinkWidth", handle)))
    return gpu


def _cuda_order(gpus: list[_NvmlGpu], device_order: str | None) -> list[_NvmlGpu]:
    """The GPUs in CUDA's enumeration order.

    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is PCI bus order (nvidia-smi's). CUDA's default,
    FASTEST_FIRST, uses an unpublished heuristic; it is approximated as: most CUDA cores x max
    SM clock first, then the higher compute capability, ties (identical GPUs) by PCI bus id. A
    GPU whose cores or clock NVML will not report sorts after those with a score.
    """
    if (device_order or "").strip().upper() == "PCI_BUS_ID":
        return sorted(gpus, key=lambda g: (g.bus_key, g.index))
    return sorted(gpus, key=lambda g: (-g.speed_score, tuple(-c for c in (g.cc or (0, 0))),
                                       g.bus_key, g.index))


def _apply_visible(ordered: list[_NvmlGpu], visible: str | None) -> tuple[list[_NvmlGpu], list[str]]:
    """Apply ``CUDA_VISIBLE_DEVICES`` the way CUDA does.

    Entries are indices into CUDA's order or GPU UUIDs (``GPU-`` plus a unique prefix). CUDA
    stops at the first entry that names no GPU (``-1``, an index out of range, an unknown UUID)
    and ignores the rest; a repeated device is treated the same way. MIG instances are not
    modelled: a ``MIG-`` entry also stops the list.
    """
    if visible is None:
        return ordered, []
    if not visible.strip():
        return [], ["CUDA_VISIBLE_DEVICES is empty: CUDA sees no GPU"]
    chosen: list[_NvmlGpu] = []
    for raw in visible.split(","):
        token = raw.strip()
        pick: _NvmlGpu | None = None
        if token.isdigit():
            pick = ordered[int(token)] if int(token) < len(ordered) else None
        elif token.upper().startswith("GPU-"):
            want = token[4:].lower()
            hits = [g for g in ordered
                    if want and (g.uuid or "").lower().removeprefix("gpu-").startswith(want)]
            pick = hits[0] if len(hits) == 1 else None
        if pick is None or pick in chosen:
            why = "repeats a GPU" if pick is not None else "names no GPU"
            if token.upper().startswith("MIG-"):
                why = "is a MIG instance (not supported)"
            return chosen, [f"CUDA_VISIBLE_DEVICES entry {token!r} {why}: CUDA ignores it and "
                            f"every entry after it"]
        chosen.append(pick)
    return chosen, []


def _peer_access(nvml: _Nvml, gpus: list[_NvmlGpu]) -> dict[int, bool | None]:
    """Per GPU (NVML index): P2P reads possible with every other GPU (nvmlDeviceGetP2PStatus)."""
    result: dict[int, bool | None] = {}
    for a in gpus:
        statuses = [nvml.query("nvmlDeviceGetP2PStatus", a.handle, b.handle, _NVML_P2P_CAPS_INDEX_READ)
                    for b in gpus if b is not a]
        if any(s is not None and s != _NVML_P2P_STATUS_OK for s in statuses):
            result[a.index] = False
        elif statuses and None not in statuses:
            result[a.index] = True
        else:  # no other GPU, or NVML would not say
            result[a.index] = None
    return result


def _first_valid_link(
        candidates: Sequence[tuple[tuple[int | None, int | None], str]]) -> tuple[int, int, str]:
    """(gen, width, origin) of the first known PCIe link, else the assumed default."""
    for (gen, width), origin in candidates:
        if gen in PCIE_GBS_PER_LANE and width in PCIE_WIDTHS:
            assert gen is not None and width is not None
            return gen, width, origin
    return DEFAULT_PCIE[0], DEFAULT_PCIE[1], "estimated"


def _gpu_device(name: str, gpu: _NvmlGpu, peer: bool | None, notes: list[str]) -> Device | None:
    """A Device for one NVML GPU, filled from the catalog where NVML is silent; None if unusable."""
    spec: GpuSpec | None = match_gpu(gpu.name, gpu.total)
    source: dict[str, str] = {}
    total = gpu.total
    if total is None and spec is not None:
        total = spec.memory_bytes
        source["memory"] = "catalog"
    if total is None:
        notes.append(f"{name} ({gpu.name}): NVML reports no memory size; GPU left out")
        return None
    memory = gpu.free if gpu.free is not None else total
    if memory <= 0:
        notes.append(f"{name} ({gpu.name}): no free memory; GPU left out")
        return None
    source.setdefault("memory", "nvml")

    if spec is not None:
        bandwidth, source["bandwidth"] = spec.bandwidth_gbs, "catalog"
    elif gpu.mem_clock_mhz and gpu.bus_width_bits:
        # NVML's memory clock is half the data rate for GDDR5X/6/6X/7 and HBM alike (RTX 4090:
        # 10501 MHz x 2 x 384 bit / 8 = 1008 GB/s), hence x2.
        bandwidth = gpu.mem_clock_mhz * 1e6 * 2 * gpu.bus_width_bits / 8 / GB
        source["bandwidth"] = "nvml"
    else:
        bandwidth, source["bandwidth"] = DEFAULT_GPU_BANDWIDTH_GBS, "estimated"
        notes.append(f"{name} ({gpu.name}): memory bandwidth unknown, assuming "
                     f"{DEFAULT_GPU_BANDWIDTH_GBS:g} GB/s; describe it in a cluster file")
    tflops = spec.fp16_tflops if spec is not None else None
    if tflops is not None:
        source["tflops"] = "catalog"

    # Max link is what device and slot can both do (the current one drops at idle), then the
    # catalog's, then the current link.
    candidates: list[tuple[tuple[int | None, int | None], str]] = [(gpu.pcie_max, "nvml")]
    if spec is not None:
        candidates.append(((spec.pcie_gen, spec.pcie_width), "catalog"))
    candidates.append((gpu.pcie_curr, "nvml"))
    gen, width, source["link"] = _first_valid_link(candidates)
    source["link_latency"] = "estimated"
    if peer is not None:
        source["peer_access"] = "nvml"
    return Device(
        name=name, kind="gpu", memory_bytes=memory, bandwidth_gbs=round(bandwidth, 1),
        model=spec.name if spec is not None else gpu.name.removeprefix("NVIDIA ").strip(),
        total_bytes=total, free_bytes=gpu.free, tflops=tflops,
        link_gbs=round(pcie_gbs(gen, width), 3), link_latency_us=DEFAULT_PCIE_LATENCY_US,
        pcie_gen=gen, pcie_width=width, peer_access=peer,
        compute_capability=f"{gpu.cc[0]}.{gpu.cc[1]}" if gpu.cc else None,
        uuid=gpu.uuid, pci_bus_id=gpu.bus_id, source=source,
    )


def _import_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:  # nvidia-ml-py not installed (or shadowed and broken)
        LOGGER.debug("pynvml import failed: %s", err)
        return None


def _discover_gpus(nvml_lib: ModuleType | Any | None) -> tuple[list[Device], list[str]]:
    """GPU devices named CUDA0.. in CUDA's order, and notes on what could not be seen."""
    if nvml_lib is None:
        return [], ["NVML is not available (nvidia-ml-py not installed): no GPU discovered"]
    nvml = _Nvml(nvml_lib)
    why = nvml.start()
    if why is not None:
        return [], [f"NVML is not available ({why}): no GPU discovered"]
    try:
        count = _int_or_none(nvml.query("nvmlDeviceGetCount")) or 0
        gpus = []
        for i in range(count):
            handle = nvml.query("nvmlDeviceGetHandleByIndex", i)
            if handle is not None:
                gpus.append(_read_nvml_gpu(nvml, i, handle))
        ordered = _cuda_order(gpus, os.environ.get("CUDA_DEVICE_ORDER"))
        visible, notes = _apply_visible(ordered, os.environ.get("CUDA_VISIBLE_DEVICES"))
        peers = _peer_access(nvml, visible)
        devices: list[Device] = []
        for gpu in visible:
            dev = _gpu_device(f"CUDA{len(devices)}", gpu, peers[gpu.index], notes)
            if dev is not None:
                devices.append(dev)
        if not devices and not notes:
            notes.append("NVML sees no NVIDIA GPU")
        return devices, notes
    finally:
        nvml.stop()


def discover_gpus(nvml_lib: ModuleType | Any | None = None, *,
                  measure: bool = False) -> tuple[list[Device], list[str]]:
    """GPU devices named CUDA0.. in CUDA's order, and notes on what could not be seen.

    ``nvml_lib`` is an NVML binding module (tests inject fakes); None imports ``pynvml``.
    ``measure`` measures each GPU's host->GPU copy rate from pageable memory (``stream_gbs``,
    through the CUDA driver: :mod:`.cudacopy`) after NVML has read the free memory.
    """
    gpus, notes = _discover_gpus(nvml_lib if nvml_lib is not None else _import_nvml())
    if measure and gpus:
        gpus, measured = with_stream_rates(gpus)
        notes += measured
    return gpus, notes


def discover(nvml: ModuleType | Any | None = None, measure: bool = False) -> Cluster:
    """This machine: NVIDIA GPUs through NVML, then the CPU.

    Respects ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` and names GPUs ``CUDA0``... in
    CUDA's order. Without a driver, NVML or ``nvidia-ml-py`` the cluster is the CPU alone and
    ``notes`` says why; this never raises for a missing or misbehaving NVML.

    Args:
        nvml: an NVML binding module to use instead of ``pynvml`` (tests inject fakes).
        measure: measure the CPU memory read bandwidth and disk read speed (about two
            seconds) instead of assuming :data:`~omni_place.cpuprobe.DEFAULT_CPU_BANDWIDTH_GBS`
            and the default disk, and each GPU's host->GPU copy rate (``stream_gbs``).
    """
    gpus, notes = discover_gpus(nvml, measure=measure)
    cpu = _local_cpu(measure=measure)
    notes += _gpu_speed_notes(gpus) + _cpu_notes(cpu)
    return Cluster(name=socket.gethostname() or "local", devices=(*gpus, cpu),
                   description="discovered (NVML + OS)", notes=tuple(notes))

